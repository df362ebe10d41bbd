"""The item plan of `higfa augment`: which images, under which labels and prompt names, as which items.

A run is a deterministic list of items (image × variant, images sorted by id). Item (i, v) gets the seed
`higfa.seeds.derive_seed(global seed, image id, v)`: its noise, contour transform and ancestral noise come from
that seed alone, so any output can be regenerated on its own and the bytes do not depend on how many
processes share the work. With a batch size B the list is cut into fixed groups of B consecutive
items; the groups do not depend on the world size either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from ..seeds import derive_seed
from . import dataset
from .dataset import class_name_from_label

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
    return [Item(s, v, derive_seed(seed, s.id, v)) for s in sources for v in range(variants)]


def make_groups(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """Fixed groups of consecutive items: they depend on the item list and B, never on the world size."""
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be >= 1")
    return [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
