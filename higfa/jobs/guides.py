"""What the guide-classifier commands (train-, import-, check-, tune-classifier: classifiers.py,
check_classifier.py, tuning.py) share: classifier files in and out, the augmentation presets, accuracy on
labelled data, --threads / --model-kwargs, and the timm models they create (architecture check, local
pretrained weights, normalisation)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier
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


# ---------------------------------------------------------------------------- timm models (train-, import-classifier)
def check_architecture(name: str) -> str:
    import difflib

    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ValueError(f"--architecture {name!r} is not a timm model" + (f"; did you mean {close}?" if close else
                         "; list them with `python -c \"import timm; print(timm.list_models('*resnet*'))\"`"))
    return name


def cached_timm_weights(name: str) -> str:
    """Local file of a timm pretrained tag (e.g. 'resnet50.a1_in1k') in the Hugging Face cache; nothing is
    downloaded. Raises a one-line error saying how to fetch it when it is absent."""
    import timm
    from huggingface_hub import hf_hub_download

    cfg = timm.models.get_pretrained_cfg(name)
    hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub:
        raise ValueError(f"--init {name!r} is neither a file nor a timm pretrained name with Hugging Face weights: "
                         "pass a local .pth/.bin/.safetensors checkpoint")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return hf_hub_download(hub, filename, local_files_only=True)
        except Exception:  # noqa: BLE001 - huggingface_hub raises several kinds of 'not cached'
            continue
    raise ValueError(f"--init {name}: its weights ({hub}) are not in the local Hugging Face cache and nothing is "
                     f"downloaded here. Fetch them once where there is internet (python -c \"import timm; "
                     f"timm.create_model('{name}', pretrained=True)\") and copy the cache, or pass a checkpoint file")


def create_model(architecture: str, num_classes: int, init: str | None = None,
                 model_kwargs: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A timm model with `num_classes` outputs, initialised from `init` (a local checkpoint file, or a
    cached timm pretrained name; its head is dropped when its class count differs). Returns the model
    and its pretrained config (input_size, mean, std)."""
    import timm

    kwargs = dict(model_kwargs or {})
    if not init:
        m = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **kwargs)
        return m, dict(m.pretrained_cfg)
    path = Path(init).expanduser()
    file = str(path) if path.is_file() else cached_timm_weights(init)
    try:
        m = timm.create_model(architecture, pretrained=True, num_classes=num_classes,
                              pretrained_cfg_overlay=dict(file=file, source="", hf_hub_id=None, url=None), **kwargs)
    except (RuntimeError, KeyError) as e:
        raise ValueError(f"--init {init} does not fit --architecture {architecture}: "
                         f"{str(e).strip().splitlines()[-1][:300]}") from e
    return m, dict(m.pretrained_cfg)


def pick_norm(args: argparse.Namespace, cfg: dict[str, Any]) -> tuple[list[float], list[float]]:
    mean = args.mean or (cfg.get("mean") if args.init else None) or IMAGENET_MEAN
    std = args.std or (cfg.get("std") if args.init else None) or IMAGENET_STD
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"--mean {mean} / --std {std}: give three values each, std > 0")
    return [float(v) for v in mean], [float(v) for v in std]
