"""Labelled image sets in memory for the classifier commands: an ImageFolder, a manifest (the formats
`higfa augment` reads) or a split of a shipped world (`builtin:test`, `builtin:fewshot:10`; `finebirds:test`), read
into uint8 [N,H,W,3] at the classifier's input size, with a label per image.

    data = read_labelled("CUB/train", size=224)            # class names from the folders
    train, val = data.split(0.1, seed=0)                    # stratified, seeded
    idx = data.targets(classifier.class_names)              # label -> class index, clear errors
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..classifier import find_name
from . import dataset


@dataclass
class Labelled:
    images: np.ndarray  # [N,H,W,3] uint8
    labels: list[str]  # [N] class label (folder name or manifest label)
    ids: list[str]  # [N] stable ids (path relative to the dataset, or builtin:split/index)
    classes: list[str]  # sorted class labels found (ImageFolder: every class folder)
    source: str  # what was read (for provenance)

    def __len__(self) -> int:
        return len(self.labels)

    def targets(self, class_names: Sequence[str], what: str = "--data") -> np.ndarray:
        """[N] class indices into `class_names`; a label matches its name, ignoring case and '_'/'-'
        (and a CUB-style '001.' prefix). Raises a one-line error listing labels that are no class."""
        from .dataset import class_name_from_label as pretty_label

        index: dict[str, int] = {}
        unknown = []
        for lab in sorted(set(self.labels)):
            hit = find_name(lab, class_names)
            hit = find_name(pretty_label(lab), class_names) if hit is None else hit
            if hit is None:
                unknown.append(lab)
            else:
                index[lab] = hit
        if unknown:
            raise ValueError(f"{what} {self.source}: labels {unknown[:5]}{' ...' if len(unknown) > 5 else ''} are not "
                             f"classes of the classifier ({len(class_names)} classes: {list(class_names[:5])}"
                             f"{' ...' if len(class_names) > 5 else ''}): use data with the classifier's classes, or "
                             "fix 'class_names' in its sidecar")
        return np.array([index[lab] for lab in self.labels], dtype=np.int64)

    def subset(self, idx: Sequence[int] | np.ndarray, source: str | None = None) -> "Labelled":
        idx = np.asarray(idx, dtype=np.int64)
        return Labelled(self.images[idx], [self.labels[i] for i in idx], [self.ids[i] for i in idx], self.classes,
                        source or self.source)

    def split(self, fraction: float, seed: int = 0) -> tuple["Labelled", "Labelled"]:
        """(train, val): `fraction` of each class (at least one image when it has two or more) held out,
        drawn with `seed`; the same data and seed always give the same split."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"--val-fraction {fraction}: must lie in (0, 1), e.g. 0.1")
        rng = np.random.default_rng(seed)
        val: list[int] = []
        for c in sorted(set(self.labels)):
            members = [i for i, lab in enumerate(self.labels) if lab == c]
            k = min(len(members) - 1, max(1, round(fraction * len(members))))
            val += sorted(rng.permutation(members)[:k].tolist())
        val_set = set(val)
        train = [i for i in range(len(self)) if i not in val_set]
        return (self.subset(train, f"{self.source} (train part)"),
                self.subset(sorted(val), f"{self.source} (seeded {fraction:g} split, seed {seed})"))


def read_labelled(data: str | Path, size: int, limit: int | None = None, workers: int = 4) -> Labelled:
    """Images of an ImageFolder, a CSV/JSON(L) manifest or `builtin:<split>[:<per class>]`, each resized
    (short side) and centre-cropped to size×size. A file that is not a readable image stops the read
    with a one-line error naming it (delete it or move it out of the dataset)."""
    if _world_of_spec(str(data)) is not None:
        return _read_builtin(str(data), size)
    from .dataset import SourceError, read_sources, square_image

    found, classes, empty = read_sources(data, limit)
    if empty:
        raise ValueError(f"--data {data}: class folders {empty[:5]} have no images; add images or remove the folders")

    def load(item: dataset.SourceImage) -> np.ndarray:
        try:
            return square_image(item.path, size)
        except SourceError as e:
            raise ValueError(f"{e} (in --data {data})") from None

    with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV decodes without the GIL
        images = list(pool.map(load, found))
    return Labelled(np.stack(images), [i.label for i in found], [i.id for i in found],
                    classes if Path(str(data)).is_dir() else sorted({i.label for i in found}), str(data))


def _world_of_spec(spec: str) -> str | None:
    """The shipped world a `<world>:<split>[:n]` data spec names ('builtin': the default one), else None."""
    from .model_path import builtin_world

    name, sep, _ = spec.partition(":")
    return builtin_world(name) if sep else None


def _read_builtin(spec: str, size: int) -> Labelled:
    from ..world.catalog import make_world

    prefix, _, rest = spec.partition(":")
    parts = rest.split(":")
    split = parts[0]
    defaults = {"test": 50, "fewshot": 10, "train": 50, "val": 50}
    if split not in defaults or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"--data {spec}: write {prefix}:<split>[:<images per class>] with split one of "
                         f"{sorted(defaults)}, e.g. {prefix}:test")
    per_class = int(parts[1]) if len(parts) == 2 else defaults[split]
    world = make_world(_world_of_spec(spec))
    s = world.split(split, per_class)
    images = s.images
    if images.shape[1] != size:
        import cv2

        images = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
    labels = [world.class_names[int(k)] for k in s.labels]
    return Labelled(images, labels, [f"{spec}/{i}" for i in range(len(labels))], list(world.class_names), spec)
