"""Fine-grained classifiers: a timm model in `<name>.safetensors` plus a `<name>.json` sidecar.

Sidecar keys (docs/classifiers.md has types and defaults): architecture (timm model name, required),
class_names (list, optional if the weights fix the count), input_size ([C,H,W] or H), mean, std
(per channel, for images in [0,1]), model_kwargs (optional extra timm.create_model arguments, e.g.
{"img_size": 64} for a ViT), provenance (optional: how it was made and how good it is, e.g.
{"val_accuracy": 0.81, ...}; written by `higfa train-classifier` / `import-classifier`, built by
`provenance`).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 2048  # a classifier's square input in pixels (timm's largest are ~1024)


def check_input_size(size: Any, what: str) -> tuple[int, int]:
    """(H, W) of an input size given as H or [C,H,W]/[H,W]; raises a one-line error naming `what` when it is not
    whole numbers within [MIN_INPUT_SIZE, MAX_INPUT_SIZE] (a huge size would exhaust memory, not fail)."""
    dims = [size] if not isinstance(size, (list, tuple)) else list(size)[-2:]
    ok = 1 <= len(dims) <= 2 and all(isinstance(d, int) and not isinstance(d, bool) for d in dims)
    if not ok or not all(MIN_INPUT_SIZE <= d <= MAX_INPUT_SIZE for d in dims):
        shown = repr(size) if isinstance(size, str) else json.dumps(size)
        raise ValueError(f"{what} {shown}: an input size must be "
                         f"whole pixels in [{MIN_INPUT_SIZE}, {MAX_INPUT_SIZE}], e.g. 224 or [3, 224, 224]")
    return (dims[0], dims[-1])


class Classifier(torch.nn.Module):
    """image [B,3,H,W] in [0,1] -> logits [B,K]: resizes to the model's input size, normalises."""

    def __init__(self, model: torch.nn.Module, class_names: Sequence[str], input_size: int | Sequence[int],
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 architecture: str = "", model_kwargs: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        size = input_size if isinstance(input_size, int) else input_size[-1]
        self.input_size = (int(input_size[-2]), int(size)) if not isinstance(input_size, int) else (size, size)
        self.architecture = architecture
        self.model_kwargs = dict(model_kwargs or {})
        self.provenance: dict[str, Any] = {}  # the sidecar's "provenance" (data, accuracy, versions)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"classifier input must be [B,3,H,W] in [0,1], got shape {tuple(image.shape)}")
        if tuple(image.shape[-2:]) != self.input_size:
            down = image.shape[-1] > self.input_size[1]
            image = F.interpolate(image, size=self.input_size, mode="bilinear", align_corners=False, antialias=down)
        x = (image - self.mean.to(image)) / self.std.to(image)
        param = next(self.model.parameters(), None)
        if param is not None:
            x = x.to(param.dtype)
        return self.model(x)

    def resolve(self, target: int | str) -> int:
        """Class index from an index, a digit string or a name (case and '_'/' ' insensitive)."""
        if isinstance(target, str) and target.strip().lstrip("-").isdigit():
            target = int(target.strip())
        if isinstance(target, int):
            if not 0 <= target < self.num_classes:
                raise ValueError(f"target class index {target} is out of range: this classifier has "
                                 f"{self.num_classes} classes (0..{self.num_classes - 1})")
            return target
        found = find_name(target, self.class_names)
        if found is not None:
            return found
        close = difflib.get_close_matches(target, self.class_names, n=3)
        more = " ..." if self.num_classes > 10 else ""
        hint = f" Did you mean {close}?" if close else f" Known classes: {self.class_names[:10]}{more}"
        raise ValueError(f"target class {target!r} is not a class of this classifier.{hint}")

    def sidecar(self) -> dict[str, Any]:
        side = {"architecture": self.architecture, "class_names": self.class_names,
                "input_size": [3, *self.input_size], "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(), "model_kwargs": self.model_kwargs}
        if self.provenance:
            side["provenance"] = self.provenance
        return side

    def summary(self) -> str:
        """One line for people: class count and, when the sidecar has it, the measured val accuracy."""
        acc = self.provenance.get("val_accuracy")
        where = self.provenance.get("val_data", "")
        acc_text = (f"val accuracy {acc:.3f}" + (f" on {Path(str(where)).name}" if where else "")
                    if isinstance(acc, (int, float)) else "val accuracy unknown (no provenance in the sidecar)")
        return f"{self.architecture}, {self.num_classes} classes, {acc_text}"


class ClassifierEnsemble(Classifier):
    """Several classifiers as one guide (or judge): image [B,3,H,W] in [0,1] -> the mean of the members'
    log-softmax [B,K], i.e. their probabilities' geometric mean, normalised by the softmax that follows.
    Each member resizes and normalises the image itself, so members may differ in architecture and input size;
    they must share their class names in order. Why: a few-shot classifier's gradient is partly adversarial,
    and such directions transfer weakly between differently trained networks, so the part of the push that the
    members share is more often the class's own features (docs/method.md "Ensemble guide" [ours])."""

    def __init__(self, members: Sequence[Classifier]):
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"a classifier ensemble needs at least 2 members, got {len(members)}")
        names = [list(m.class_names) for m in members]
        for i, n in enumerate(names[1:], 2):
            if [normalise_name(x) for x in n] != [normalise_name(x) for x in names[0]]:
                raise ValueError(f"ensemble member {i} ({getattr(members[i - 1], 'architecture', '?')}) has other "
                                 f"class names than member 1 ({len(n)} vs {len(names[0])} classes, or another "
                                 "order): every member must be trained on the same classes, in the same order")
        archs = [getattr(m, "architecture", "") or type(m).__name__ for m in members]
        super().__init__(torch.nn.ModuleList(members), names[0], members[0].input_size,
                         architecture="ensemble(" + "+".join(archs) + ")")
        self.provenance = {"ensemble": [dict(getattr(m, "provenance", {}) or {}) for m in members]}

    @property
    def members(self) -> list[Classifier]:
        return list(self.model)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"classifier input must be [B,3,H,W] in [0,1], got shape {tuple(image.shape)}")
        return torch.stack([torch.log_softmax(m(image).float(), -1) for m in self.model]).mean(0)

    def sidecar(self) -> dict[str, Any]:
        raise ValueError("a classifier ensemble has no single file: save its members, and build the ensemble "
                         "from them when loading (ClassifierEnsemble([load_classifier(a), load_classifier(b)]))")

    def summary(self) -> str:
        return f"ensemble of {len(self.model)}: " + "; ".join(m.summary() for m in self.model)


def normalise_name(name: str) -> str:
    """'Red_crowned-Finch ' -> 'red crowned finch': how class names are compared everywhere."""
    return " ".join(str(name).replace("_", " ").replace("-", " ").lower().split())


def find_name(name: str, names: Sequence[str]) -> int | None:
    """Index of `name` in `names` ignoring case, '_', '-' and spacing; None when absent."""
    key = normalise_name(name)
    return next((i for i, n in enumerate(names) if normalise_name(n) == key), None)


def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_classifier(clf: Classifier, path: str | Path) -> Path:
    """Write `<path>.safetensors` and its sidecar (atomically, each); returns the weights path.
    A name like `cub.v2` keeps its dots: only a `.safetensors`/`.json` suffix is replaced."""
    from safetensors.torch import save

    from .files import atomic_write_bytes

    path = Path(path)
    if path.suffix.lower() in (".safetensors", ".json"):
        path = path.with_suffix("")
    path = path.with_name(path.name + ".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in clf.model.state_dict().items()}
    atomic_write_bytes(path, save(state))
    atomic_write_bytes(sidecar_path(path), json.dumps(clf.sidecar(), indent=1).encode())
    return path


def build_classifier(architecture: str, class_names: Sequence[str], input_size: int | Sequence[int],
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     **model_kwargs: Any) -> Classifier:
    """A freshly initialised timm classifier (training scripts and tests)."""
    import timm

    model = timm.create_model(architecture, pretrained=False, num_classes=len(class_names), **model_kwargs)
    return Classifier(model, class_names, input_size, mean, std, architecture, model_kwargs)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load weights + sidecar; eval mode, gradients off for the weights (they are never trained here)."""
    import timm
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights not found: {path}. Put the .safetensors file (and its .json "
                                "sidecar) there, e.g. in ComfyUI's models/classifiers/")
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"classifier sidecar not found: {side}. Create it next to the weights with at least "
                                '{"architecture": "<timm model name>", "class_names": [...], "input_size": 224}')
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"classifier sidecar {side} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"classifier sidecar {side} is not a JSON object: write {{\"architecture\": ..., "
                         "\"class_names\": [...], \"input_size\": 224}")
    arch = meta.get("architecture")
    if not arch:
        raise ValueError(f"classifier sidecar {side} has no 'architecture' (a timm model name such as 'resnet50')")
    if arch not in timm.list_models():
        raise ValueError(f"classifier sidecar {side}: architecture {arch!r} is not a timm model. Close names: "
                         f"{difflib.get_close_matches(arch, timm.list_models(), n=3)}")
    if meta.get("input_size") is not None:  # before any model is built: a huge size is refused, not allocated
        check_input_size(meta["input_size"], f"classifier sidecar {side}: input_size")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises SafetensorError (header) or OSError/ValueError
        raise ValueError(f"classifier weights {path} are not a readable .safetensors file ({e}): the file is "
                         "damaged or incomplete (e.g. an interrupted copy) or not safetensors; copy it again, or "
                         "recreate it with `higfa import-classifier`") from e
    kwargs = dict(meta.get("model_kwargs") or {})
    probe = timm.create_model(arch, pretrained=False, num_classes=1, **kwargs)
    head = probe.pretrained_cfg.get("classifier", "fc")
    head = head[0] if isinstance(head, (list, tuple)) else head
    head_w = state.get(f"{head}.weight")
    if head_w is None:
        raise ValueError(f"classifier weights {path} do not match architecture {arch!r}: no '{head}.weight' "
                         f"(the {arch} head). Fix 'architecture' in {side.name} to the model that was trained.")
    num_classes = int(head_w.shape[0])
    names = meta.get("class_names") or [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"classifier sidecar {side} lists {len(names)} class_names but the weights have "
                         f"{num_classes} outputs: make the list match the trained head")
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"classifier weights {path} do not match architecture {arch!r}: "
                         f"{str(e).splitlines()[-1].strip()} "
                         f"Fix 'architecture' or 'model_kwargs' in {side.name}.") from e
    if missing or unexpected:
        raise ValueError(f"classifier weights {path} do not match architecture {arch!r}: missing keys "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}. "
                         f"Fix 'architecture' or 'model_kwargs' in {side.name}.")
    cfg = model.pretrained_cfg
    size = meta.get("input_size") or cfg.get("input_size", (3, 224, 224))
    mean = meta.get("mean") or cfg.get("mean", IMAGENET_MEAN)
    std = meta.get("std") or cfg.get("std", IMAGENET_STD)
    clf = Classifier(model, names, size, mean, std, arch, kwargs).eval().requires_grad_(False)
    clf.provenance = dict(meta.get("provenance") or {})
    return clf.to(device)


def is_project_sidecar(path: str | Path) -> bool:
    """`path` is a classifier sidecar this project wrote: a JSON object with an 'architecture' and the
    'provenance' `provenance` writes (its versions name higfa). Anything else (a user's own NAME.json, a
    hand-written sidecar) is never replaced by the classifier commands."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    prov = meta.get("provenance") if isinstance(meta, dict) else None
    versions = prov.get("versions") if isinstance(prov, dict) else None
    return isinstance(meta.get("architecture"), str) and isinstance(versions, dict) and "higfa" in versions


def provenance(data: str, classes: Sequence[str], evaluation: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    """The sidecar's `provenance`: data, class count, val accuracy and a per-class summary (mean, min,
    the five worst classes), date and library versions, plus `extra` (epochs, init, ...)."""
    import platform
    import time

    import numpy as np
    import timm

    out: dict[str, Any] = {"data": str(data), "num_classes": len(classes), **extra}
    if evaluation is not None and evaluation.get("n"):  # an empty val set has no accuracy (NaN is no JSON)
        per = [(c, a) for c, a in zip(classes, evaluation["per_class"]) if a == a]  # NaN: class absent from val
        out["val_accuracy"] = round(float(evaluation["accuracy"]), 4)
        out["val_images"] = int(evaluation["n"])
        if per:
            accs = [a for _, a in per]
            out["val_per_class"] = {"mean": round(float(np.mean(accs)), 4), "min": round(float(np.min(accs)), 4),
                                    "worst": [[c, round(a, 4)] for c, a in sorted(per, key=lambda p: p[1])[:5]]}
    out["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out["versions"] = {"higfa": _higfa_version(), "torch": torch.__version__, "timm": timm.__version__,
                       "python": platform.python_version()}
    return out


def _higfa_version() -> str:
    try:
        from importlib.metadata import version

        return version("higfa")
    except Exception:  # noqa: BLE001 - not installed as a distribution (a source checkout)
        return "source"
