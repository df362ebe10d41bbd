"""What the guide-classifier commands (train-, import-, check-, tune-classifier: classifiers.py,
check_classifier.py, tuning.py) share: classifier files in and out, the augmentation presets, accuracy on
labelled data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..classifier import Classifier
from .labelled import Labelled

AUGMENT_PRESETS = ("none", "light", "default", "robust")


def augment_preset(name: str):
    """none | light (flip, ±5 % shift) | default (flip, shift, scale, rotation) | robust (default + a
    little pixel noise and blur, as the built-in guide: it also sees blurry x̂0 during guidance)."""
    from ..training import Augment

    presets = {"none": None, "light": Augment(translate=0.05, scale=0.0, rotate=0.0), "default": Augment(),
               "robust": Augment(noise=0.03, blur=1.0)}
    if name not in presets:
        raise ValueError(f"--augment {name!r}: choose one of {list(presets)}")
    return presets[name]


def resolve_classifier(name: str) -> Path:
    """A .safetensors path, with or without the suffix."""
    p = Path(name).expanduser()
    if p.suffix.lower() != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    if not p.is_file():
        raise FileNotFoundError(f"classifier {name} not found (looked for {p}): pass the path of NAME.safetensors")
    return p


def out_path(out: str) -> Path:
    """--out NAME, NAME.safetensors or NAME.json -> NAME (the writers add the suffixes)."""
    p = Path(out).expanduser()
    if p.suffix.lower() in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """--model-kwargs: a JSON object of extra timm.create_model arguments ({} when absent)."""
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--model-kwargs {text!r}: not valid JSON ({e.msg}); give an object, e.g. "
                         "'{\"img_size\": 224}'") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model-kwargs {text!r}: must be a JSON object of timm.create_model arguments, e.g. "
                         "'{\"img_size\": 224}'")
    return kwargs


def set_threads(threads: int | None) -> None:
    """--threads: torch CPU threads (as `higfa augment`; default: torch's own choice)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads {threads}: must be >= 1 (or left out: torch's default)")
    import torch

    torch.set_num_threads(threads)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to write classifier NAME (`out_path`) over what is there: an existing NAME.safetensors unless
    `overwrite`, and a NAME.json that is not a sidecar this project wrote, ever (it may be the user's own
    file that merely shares the name)."""
    from ..classifier import is_project_sidecar

    weights, side = out.with_name(out.name + ".safetensors"), out.with_name(out.name + ".json")
    if side.exists() and not is_project_sidecar(side):
        raise ValueError(f"--out {out}: {side} exists and is not a classifier sidecar written by higfa; it is never "
                         "replaced: choose another --out name (or move that file away)")
    if weights.exists() and not overwrite:
        raise ValueError(f"--out {out}: {weights.name} exists already; pass --overwrite to replace it, or choose "
                         "another --out name")


def evaluate_on(clf: Classifier, data: Labelled, what: str) -> dict[str, Any]:
    """`higfa.training.evaluate` of `clf` on labelled data (`what` names the option in errors)."""
    from ..training import evaluate

    return evaluate(clf, data.images, data.targets(clf.class_names, what))
