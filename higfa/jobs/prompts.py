"""The prompt rule of every path that turns a label into a prompt: `higfa augment`, `higfa tune-classifier`
and HiGFA Load Image Folder. A template names the class as `{class}` (`{class_name}`, the node's old name,
is the same field), the super-category as `{super}` and the folder name as `{label}`; a label becomes a class
name by `dataset.class_name_from_label`, a model's own names (world.json) or a --class-names file.

    check_prompt("a photo of a {class}, a type of {super}")
    fill_prompt("a photo of a {class}", "Black footed Albatross")     # 'a photo of a Black footed Albatross'
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..classifier import normalise_name
from .dataset import class_name_from_label
from .model_path import world_info

DEFAULT_PROMPT = "a photo of a {class}, a type of {super}"
PROMPT_FIELDS = {"class", "super", "label"}
ALIASES = {"class_name": "class"}  # HiGFA Load Image Folder's first placeholder: saved workflows keep working


def check_prompt(template: str, option: str = "--prompt") -> None:
    """Raise a one-line error naming `option` when `template` uses a placeholder that is no field."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:  # a lone '{' or '}'
        raise ValueError(f"{option} {template!r}: {e}; write {{{{ and }}}} for literal braces") from None
    unknown = fields - PROMPT_FIELDS - set(ALIASES)
    if unknown:
        raise ValueError(f"{option} {template!r} uses {sorted(unknown)}: the placeholders are {{class}} (class name), "
                         "{super} (--super, e.g. 'bird') and {label} (folder name)")


def fill_prompt(template: str, class_name: str, super_name: str = "", label: str = "") -> str:
    """`template` with {class} (and its alias {class_name}), {super} and {label} filled in."""
    return template.format(**{"class": class_name, "class_name": class_name, "super": super_name, "label": label})


@dataclass(frozen=True)
class PromptText:
    """The prompt template ({class}, {super}, {label}), the super-category and the negative prompt."""

    template: str
    super_name: str
    negative: str = ""

    def for_source(self, source) -> str:
        """The prompt of a `plan.Source` (its class name and label)."""
        return fill_prompt(self.template, source.class_name, self.super_name, source.label)


def model_prompts(model: str) -> tuple[str, dict[str, str]] | None:
    """(template, {normalised class name: prompt name}) of a model folder that ships a world.json
    (the built-in world: its text model knows family names only, so a species is prompted by its family)."""
    try:
        info = (world_info(model) or {})["world"]
        template = info["prompt_template"].replace("{family}", "{class}")
        return template, {normalise_name(c): f for c, f in zip(info["class_names"], info["species_family"])}
    except (OSError, KeyError, TypeError, ValueError):
        return None


def prompt_names(labels: Sequence[str], found_labels: set[str], class_names: str | None,
                 world_names: dict[str, str] | None) -> dict[str, str]:
    """label -> the class name its prompt says: `class_name_from_label`, else a model's own names
    (world.json: {normalised class name: prompt name}), else the --class-names file (which must name
    every label in use)."""
    names = {lab: class_name_from_label(lab) for lab in labels}
    if world_names and not class_names:
        for lab in labels:
            for key in (normalise_name(lab), normalise_name(class_name_from_label(lab))):
                if key in world_names:
                    names[lab] = world_names[key]
                    break
    if class_names:
        given = read_class_names(class_names, labels)
        missing = sorted(found_labels - set(given))
        if missing:
            raise ValueError(f"--class-names {class_names} has no name for labels {missing[:8]}: add them")
        names.update(given)
    return names


def read_class_names(path: str | Path, labels: Sequence[str]) -> dict[str, str]:
    """label -> prompt name from a JSON object {label: name}, a JSON list / text file of names in
    sorted-label order, or a text/CSV file of `label<TAB or ,>name` lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-names file not found: {path}. Give a JSON object {{label: name}} or a text "
                                "file with one 'label<TAB>name' per line")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, list):
            return _names_in_order(data, labels, path)
        if not isinstance(data, dict):
            raise ValueError(f"class-names file {path}: expected a JSON object {{label: name}} or a list of names")
        return {str(k): str(v) for k, v in data.items()}
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if all(("\t" in ln or "," in ln) for ln in lines):
        return {a.strip(): b.strip() for a, b in (re.split(r"[\t,]", ln, maxsplit=1) for ln in lines)}
    return _names_in_order(lines, labels, path)


def _names_in_order(names: list, labels: Sequence[str], path: Path) -> dict[str, str]:
    if len(names) != len(labels):
        raise ValueError(f"class-names file {path} lists {len(names)} names for {len(labels)} classes: give one per "
                         "class in sorted label order, or 'label<TAB>name' lines")
    return {lab: str(n) for lab, n in zip(sorted(labels), names)}
