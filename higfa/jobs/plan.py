"""The item plan of `higfa augment`: which images, under which labels and prompt names, as which items.

A run is a deterministic list of items (image × variant, images sorted by id). Item (i, v) gets
seed = H(global seed, image id, v): its noise, contour transform and ancestral noise come from that
seed alone, so any output can be regenerated on its own and the bytes do not depend on how many
processes share the work. With a batch size B the list is cut into fixed groups of B consecutive
items; the groups do not depend on the world size either.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from ..backends.components import BUILTIN
from ..classifier import normalise_name
from . import dataset
from .dataset import class_name_from_label

DEFAULT_PROMPT = "a photo of a {class}, a type of {super}"
PROMPT_FIELDS = {"class", "super", "label"}


@dataclass(frozen=True)
class Source:
    """One input image."""

    id: str  # stable id: path relative to the dataset root (or as written in the manifest)
    path: Path
    label: str  # folder name / manifest label; a safe folder name (`dataset.safe_label`)
    class_name: str  # what the prompt says
    target: int | None  # classifier class index
    name: str  # output file stem, unique within the label


@dataclass(frozen=True)
class Item:
    source: Source
    variant: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.source.id}#{self.variant}"

    @property
    def output(self) -> str:
        return f"images/{self.source.label}/{self.source.name}_v{self.variant}.png"

    @property
    def trace(self) -> str:
        return f"traces/{self.source.label}/{self.source.name}_v{self.variant}.json"


def item_seed(global_seed: int, image_id: str, variant: int) -> int:
    """A 63-bit seed from (global seed, image id, variant) only."""
    digest = hashlib.sha256(f"higfa-augment|{global_seed}|{image_id}|{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


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


def read_sources(data: str | Path, limit: int | None = None) -> tuple[list[dataset.SourceImage], list[str], list[str]]:
    """(images sorted by id, labels, empty class folders) of an ImageFolder or a manifest. Every label
    must be usable as an output folder name (`dataset.safe_label`): a clear error names the input otherwise."""
    data = Path(data).expanduser()
    if data.is_dir():
        found, classes = dataset.scan_image_folder(data)
        empty = dataset.empty_classes(found, classes)
    elif data.is_file():
        found = dataset.read_manifest(data)
        classes, empty = sorted({i.label for i in found}), []
    else:
        raise FileNotFoundError(f"--data {data} not found: pass an ImageFolder (one sub-folder per class) or a "
                                "CSV/JSON manifest with path,label")
    for it in found:
        try:
            dataset.safe_label(it.label)
        except ValueError as e:
            raise ValueError(f"--data {data}, image {it.id}: {e}. The label becomes a folder of --out") from None
    found = sorted({i.id: i for i in found}.values(), key=lambda i: i.id)
    if limit is not None:
        found = found[:limit]
    if not found:
        raise ValueError(f"--data {data} has no images ({', '.join(dataset.IMAGE_EXTENSIONS)}): nothing to augment")
    return found, classes, empty


def model_prompts(model: str) -> tuple[str, dict[str, str]] | None:
    """(template, {normalised class name: prompt name}) of a model folder that ships a world.json
    (the built-in world: its text model knows family names only, so a species is prompted by its family)."""
    from ..backends.components import builtin_model_path

    try:
        folder = builtin_model_path() if model == BUILTIN else Path(model)
        info = json.loads((folder / "world.json").read_text())["world"]
        template = info["prompt_template"].replace("{family}", "{class}")
        return template, {normalise_name(c): f for c, f in zip(info["class_names"], info["species_family"])}
    except (OSError, KeyError, TypeError, ValueError):
        return None


def default_builtin_classifier() -> str | None:
    """The built-in world's guidance classifier, shipped beside its diffusers folder."""
    from ..backends.components import builtin_model_path

    path = builtin_model_path() / "guidance.safetensors"
    return str(path) if path.is_file() else None


def check_prompt(template: str) -> None:
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    unknown = fields - PROMPT_FIELDS
    if unknown:
        raise ValueError(f"--prompt {template!r} uses {sorted(unknown)}: the placeholders are {{class}} (class name), "
                         "{super} (--super, e.g. 'bird') and {label} (folder name)")


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


def resolve_targets(labels: Sequence[str], names: dict[str, str], classifier=None,
                    what: str = "the classifier") -> dict[str, int | None]:
    """label -> the classifier's class index (the label, its readable form and its class name are tried);
    all None without a classifier. A clear error lists the labels `what` does not know."""
    targets: dict[str, int | None] = {}
    unknown = []
    for label in sorted(set(labels)):
        if classifier is None:
            targets[label] = None
            continue
        for key in (label, class_name_from_label(label), names.get(label, label)):
            try:
                targets[label] = classifier.resolve(key)
                break
            except ValueError:
                continue
        else:
            unknown.append(label)
    if unknown:
        raise ValueError(f"labels {unknown} are not classes of {what} (it knows {classifier.class_names[:8]}"
                         f"{' ...' if classifier.num_classes > 8 else ''}). Map them with --class-names (the folder "
                         "name, its readable form and its class name are tried), use a classifier trained on this "
                         "dataset, or choose --preset cfg/contour (no classifier)")
    return targets


def make_sources(found: Sequence[dataset.SourceImage], names: dict[str, str], classifier=None) -> list[Source]:
    """Attach prompt names, classifier targets and unique output names; clear errors for labels the
    classifier does not know."""
    targets = resolve_targets([i.label for i in found], names, classifier)
    sources, seen = [], {}
    for it in found:
        parts = [p for p in PurePosixPath(it.id).with_suffix("").parts if p not in ("/", "..", ".")]
        if len(parts) > 1 and parts[0] == it.label:
            parts = parts[1:]
        name = "__".join(re.sub(r"[^\w.\-]+", "_", p) for p in parts) or "image"
        clash = seen.get((it.label, name))
        if clash is not None:
            raise ValueError(f"inputs {clash!r} and {it.id!r} would both write {it.label}/{name}_v*.png: rename one "
                             "(they differ only in extension or punctuation)")
        seen[(it.label, name)] = it.id
        sources.append(Source(it.id, it.path, dataset.safe_label(it.label),
                              names.get(it.label, class_name_from_label(it.label)), targets[it.label], name))
    return sources


def make_items(sources: Sequence[Source], variants: int, seed: int) -> list[Item]:
    if variants < 1:
        raise ValueError(f"--variants {variants}: need at least 1 synthetic image per real image")
    return [Item(s, v, item_seed(seed, s.id, v)) for s in sources for v in range(variants)]


def make_groups(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """Fixed groups of consecutive items: they depend on the item list and B, never on the world size."""
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be >= 1")
    return [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
