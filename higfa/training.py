"""Train and evaluate a fine-grained classifier (a `higfa.classifier.Classifier`) on image tensors.

The generic loop behind the built-in world's guidance and oracle classifiers, the quality
benchmark's downstream runs and `higfa evaluate`:

    clf = build_classifier("test_resnet", class_names, 64, mean=(.5,)*3, std=(.5,)*3)
    result = train_classifier(clf, images, labels, steps=600, seed=0)   # images [N,3,H,W] in [0,1]
    acc = evaluate(result.classifier, test_images, test_labels)["accuracy"]

Everything is seeded (initialisation is the caller's; batch order and augmentation use `seed`),
and runs on whatever device the classifier is on. Augmentation is geometric (flip, shift, scale,
rotation) plus optional noise and blur; it never changes colours, which fine-grained classes
often depend on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import Classifier


@dataclass(frozen=True)
class Augment:
    """Random per-sample augmentation of a batch [B,3,H,W] in [0,1].

    flip: horizontal flip with p = 0.5. translate: ± fraction of the size. scale: ± fraction.
    rotate: ± degrees. noise: Gaussian pixel noise with σ drawn from [0, noise]. blur: Gaussian
    blur σ drawn from [0, blur] pixels (applied to half of the batch). Borders are reflected.
    """

    flip: bool = True
    translate: float = 0.1
    scale: float = 0.1
    rotate: float = 10.0
    noise: float = 0.0
    blur: float = 0.0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        B = images.shape[0]

        def u(*shape: int) -> torch.Tensor:  # uniform in [-1, 1], on the CPU generator
            return (torch.rand(*shape, generator=generator) * 2 - 1).to(images.device)

        x = images
        if self.translate or self.scale or self.rotate or self.flip:
            angle = u(B) * math.radians(self.rotate)
            s = 1 + u(B) * self.scale
            sign = torch.ones(B, device=x.device)
            if self.flip:
                sign = torch.where(torch.rand(B, generator=generator).to(x.device) < 0.5, -sign, sign)
            cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
            theta = torch.stack([torch.stack([cos * sign, -sin, u(B) * 2 * self.translate], 1),
                                 torch.stack([sin * sign, cos, u(B) * 2 * self.translate], 1)], 1)
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.blur > 0:
            sigma = float(torch.rand(1, generator=generator)) * self.blur
            if sigma > 0.2:
                k, C = _gauss_kernel(sigma).to(x), x.shape[1]
                r = len(k) // 2
                blurred = F.conv2d(F.pad(x, [r, r, r, r], mode="reflect"), k.view(1, 1, 1, -1).expand(C, 1, 1, -1),
                                   groups=C)
                blurred = F.conv2d(blurred, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
                pick = (torch.rand(B, generator=generator) < 0.5).to(x.device).view(B, 1, 1, 1)
                x = torch.where(pick, blurred, x)
        if self.noise > 0:
            sigma = torch.rand(B, 1, 1, 1, generator=generator).to(x.device) * self.noise
            x = x + sigma * torch.randn(x.shape, generator=generator).to(x.device)
        return x.clamp(0, 1)


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    return k / k.sum()


NO_AUGMENT = Augment(flip=False, translate=0.0, scale=0.0, rotate=0.0)


CHECKPOINT_FORMAT = "higfa.training.checkpoint/1"  # the marker of a resume file train_classifier wrote


@dataclass
class TrainResult:
    classifier: Classifier  # trained, in eval mode, weights frozen
    history: list[dict[str, float]] = field(default_factory=list)  # {"step", "loss", ["accuracy"]}
    seconds: float = 0.0
    steps: int = 0


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N,H,W,3] (numpy or torch) -> float32 [N,3,H,W] in [0,1]; float [N,3,H,W] passes through."""
    t = torch.as_tensor(images)
    if t.dtype == torch.uint8:
        if t.ndim != 4 or t.shape[-1] != 3:
            raise ValueError(f"uint8 images must be [N,H,W,3], got shape {tuple(t.shape)}")
        return t.permute(0, 3, 1, 2).float().div(255.0).contiguous()
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"float images must be [N,3,H,W] in [0,1], got shape {tuple(t.shape)}")
    return t.float()


def train_classifier(classifier: Classifier, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                     *, steps: int = 500, batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 5e-4,
                     label_smoothing: float = 0.1, warmup: int = 30, augment: Augment | None = Augment(),
                     weights: torch.Tensor | np.ndarray | None = None, seed: int = 0,
                     eval_images: torch.Tensor | np.ndarray | None = None,
                     eval_labels: torch.Tensor | np.ndarray | None = None, eval_every: int = 0,
                     callback: Callable[[int, float], None] | None = None,
                     checkpoint: str | Path | None = None, checkpoint_every: int = 0,
                     checkpoint_seconds: float = 0.0, run_config: dict[str, Any] | None = None,
                     progress: bool = False, amp: bool = True,
                     adversarial: float = 0.0, adversarial_steps: int = 3, head_only: bool = False) -> TrainResult:
    """Train `classifier` in place with AdamW, a linear warm-up and cosine decay. The one training loop
    of the project: `higfa train-classifier`, `higfa tune-classifier`, the built-in world's guide and
    oracle, the quality bench and `higfa evaluate` all call it.

    images: [N,3,H,W] float in [0,1] or uint8 [N,H,W,3] (kept as uint8, converted per batch: a
    large dataset stays 4x smaller in memory); labels: [N] class indices.
    weights: optional [N] sampling weights (e.g. to set the share of synthetic images per batch);
    without them each epoch is a seeded shuffle. eval_*: a held-out set evaluated every
    `eval_every` steps (0: only at the end) into `history`. callback(step, loss) after each step.
    checkpoint: a file that holds everything needed to continue (weights, optimiser, scheduler, the
    batch generator and the rest of the epoch's order), written atomically every `checkpoint_every`
    steps and/or once `checkpoint_seconds` of wall time have passed since the last one (0: that rule off);
    when it exists at the start, carries `CHECKPOINT_FORMAT` and its `run_config` equals this one, training
    continues from its step with the same batches it would have drawn (a resumed run ends with the same
    weights). It is read with `torch.load(weights_only=True)`: tensors and plain containers, no code.
    progress: a tqdm bar. amp: autocast on CUDA (bfloat16 where supported, else float16 with loss
    scaling); no effect on the CPU. adversarial: ε (image in [0,1]) of an L∞ PGD attack with
    `adversarial_steps` steps applied to every training batch (robust training; 0: off). head_only: train
    only the model's final classifier layer (timm's `get_classifier()`) on frozen features, a linear probe of
    pretrained weights; the frozen layers stay in eval mode (their BatchNorm statistics are kept).
    It stays one long function because resuming must rebuild exactly the state the loop keeps (optimiser,
    schedule, batch generator, the epoch's order), which is easiest to check for completeness in one place.
    Under torchrun (an initialised torch.distributed process group) the model is wrapped in
    DistributedDataParallel and each rank trains on its slice of every global batch; rank 0
    writes the checkpoint.
    Returns the classifier in eval mode with frozen weights, ready for guidance.
    """
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        x = to_tensor(x)
    elif x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"uint8 images must be [N,H,W,3], got shape {tuple(x.shape)}")
    y = torch.as_tensor(labels).long().reshape(-1)
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"train_classifier: {len(x)} images but {len(y)} labels; pass one label per image")
    if int(y.min()) < 0 or int(y.max()) >= classifier.num_classes:
        raise ValueError(f"train_classifier: labels span {int(y.min())}..{int(y.max())} but the classifier has "
                         f"{classifier.num_classes} classes; build it with one class name per label")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"train_classifier: steps ({steps}) and batch_size ({batch_size}) must be >= 1")
    device = next(classifier.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if w is not None and (len(w) != len(y) or bool((w < 0).any()) or float(w.sum()) <= 0):
        raise ValueError("train_classifier: weights must be [N] non-negative with a positive sum")
    rank, world = _dist_rank()
    head = _head(classifier) if head_only else None

    def train_mode() -> None:
        classifier.train()
        if head is not None:
            classifier.model.eval()
            head.train()

    classifier.requires_grad_(head is None)
    if head is not None:
        head.requires_grad_(True)
    train_mode()
    net: torch.nn.Module = classifier
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            classifier, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in classifier.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) *
                                              0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    use_amp = bool(amp) and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    history: list[dict[str, float]] = []
    order = torch.empty(0, dtype=torch.long)
    first = 0
    config = {**(run_config or {}), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "n": len(y),
              **({"head_only": True} if head_only else {})}  # absent when off: older resume files still match
    if checkpoint is not None and Path(checkpoint).is_file():
        state = _load_checkpoint(Path(checkpoint), config)
        classifier.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        gen.set_state(state["generator"])
        order, history, first = state["order"], state["history"], int(state["step"])
    started = saved_at = time.perf_counter()
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=first, unit="step", dynamic_ncols=True, desc="train")
    for step in range(first, steps):
        if w is not None:
            idx = torch.multinomial(w, batch_size, replacement=True, generator=gen)
        else:
            if len(order) < batch_size:
                order = torch.cat([order, torch.randperm(len(y), generator=gen)])
            idx, order = order[:batch_size], order[batch_size:]
        xb = to_tensor(x[idx]).to(device)
        if augment is not None:  # every rank draws the whole batch: the generators stay in step
            xb = augment(xb, gen)
        yb = y[idx].to(device)
        if world > 1:
            xb, yb = xb[rank::world], yb[rank::world]
        if adversarial > 0:
            xb = pgd_attack(classifier, xb, yb, adversarial, adversarial_steps)
            train_mode()  # pgd_attack restores train() on every module; a linear probe keeps its body in eval
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            loss = F.cross_entropy(net(xb).float(), yb, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        row: dict[str, float] = {"step": step + 1, "loss": float(loss.detach())}
        last = step + 1 == steps
        if eval_images is not None and eval_labels is not None and (
                last or (eval_every and (step + 1) % eval_every == 0)):
            row["accuracy"] = evaluate(classifier, eval_images, eval_labels)["accuracy"]
            train_mode()
        history.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "step"}, refresh=False)
        due = (checkpoint_every and (step + 1) % checkpoint_every == 0) or (
            checkpoint_seconds > 0 and time.perf_counter() - saved_at >= checkpoint_seconds)
        if checkpoint is not None and due and not last and rank == 0:
            saved_at = time.perf_counter()
            _save_checkpoint(Path(checkpoint), {
                "format": CHECKPOINT_FORMAT, "config": config, "step": step + 1, "model": classifier.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "generator": gen.get_state(),
                "order": order, "history": history})
        if callback is not None:
            callback(step + 1, row["loss"])
    if bar is not None:
        bar.close()
    classifier.eval().requires_grad_(False)
    return TrainResult(classifier, history, time.perf_counter() - started, steps)


def _head(classifier: Classifier) -> torch.nn.Module:
    """The model's final classifier layer (timm's `get_classifier()`), for a linear probe."""
    get = getattr(classifier.model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Module) or not any(True for _ in head.parameters()):
        raise ValueError(f"head_only: the model ({classifier.architecture or type(classifier.model).__name__}) has "
                         "no trainable final layer from timm's get_classifier(); train the whole model instead")
    return head


def pgd_attack(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 3,
               ) -> torch.Tensor:
    """L∞ projected gradient ascent on the loss: images [B,3,H,W] in [0,1] -> perturbed images within
    ±eps (step 2.5·eps/steps, random start), clamped to [0,1]. Batch-norm statistics are not updated."""
    was_training = classifier.training
    classifier.eval()
    gen = torch.Generator().manual_seed(int(labels.sum()) + len(labels))
    delta = ((torch.rand(images.shape, generator=gen) * 2 - 1) * eps).to(images)
    alpha = 2.5 * eps / max(1, steps)
    for _ in range(max(1, steps)):
        delta.requires_grad_(True)
        loss = F.cross_entropy(classifier((images + delta).clamp(0, 1)).float(), labels)
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
    classifier.train(was_training)
    return (images + delta).clamp(0, 1).detach()


def _dist_rank() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    from .files import atomic_write

    atomic_write(path, lambda f: torch.save(state, f))


def read_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The state of a checkpoint `train_classifier` wrote, or None when `path` is no such file (absent,
    unreadable, or without `CHECKPOINT_FORMAT`, e.g. a user's own .ckpt). Loaded with weights_only=True:
    a file that needs unpickling of code is refused by torch, never run."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable or not weights-only: not ours either way
        return None
    return state if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT else None


def _load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    state = read_checkpoint(path)
    if state is None:
        raise ValueError(f"training checkpoint {path} is not one this training loop wrote (unreadable, damaged, or "
                         "another program's file): it is left as it is; move it away to start over")
    old = state.get("config", {})
    diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    if diff:
        raise ValueError(f"training checkpoint {path} belongs to another run (differs in {diff}): rerun with the "
                         "same settings to resume, or delete it (or pass --overwrite) to start over")
    return state


@torch.no_grad()
def predict(classifier: Classifier, images: torch.Tensor | np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Softmax probabilities [N,K] (eval mode restored to the caller's mode afterwards)."""
    was_training = classifier.training
    classifier.eval()
    x = to_tensor(images)
    device = next(classifier.parameters()).device
    out = [torch.softmax(classifier(x[i:i + batch_size].to(device)).float(), -1).cpu()
           for i in range(0, len(x), batch_size)]
    classifier.train(was_training)
    return torch.cat(out) if out else torch.empty(0, classifier.num_classes)


def evaluate(classifier: Classifier, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
             batch_size: int = 256) -> dict[str, Any]:
    """accuracy, per_class accuracy [K] (NaN for absent classes), mean p(true class), n."""
    y = torch.as_tensor(labels).long().reshape(-1)
    probs = predict(classifier, images, batch_size)
    if len(probs) != len(y):
        raise ValueError(f"evaluate: {len(probs)} images but {len(y)} labels")
    correct = (probs.argmax(1) == y).float()
    per_class = [float(correct[y == k].mean()) if bool((y == k).any()) else float("nan")
                 for k in range(classifier.num_classes)]
    return {"accuracy": float(correct.mean()) if len(y) else float("nan"), "per_class": per_class,
            "mean_true_prob": float(probs[torch.arange(len(y)), y].mean()) if len(y) else float("nan"), "n": len(y)}


def features(classifier: Classifier, images: torch.Tensor | np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Penultimate (pre-logits) features [N,D] of a timm classifier, for diversity metrics."""
    x = to_tensor(images)
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            if tuple(xb.shape[-2:]) != classifier.input_size:
                xb = F.interpolate(xb, size=classifier.input_size, mode="bilinear", align_corners=False)
            xb = (xb - classifier.mean.to(xb)) / classifier.std.to(xb)
            m = classifier.model
            out.append(m.forward_head(m.forward_features(xb), pre_logits=True).float().cpu())
    classifier.train(was_training)
    return torch.cat(out)


def fooling_gap(guide_pred: Sequence[int] | np.ndarray, independent_pred: Sequence[int] | np.ndarray,
                targets: Sequence[int] | np.ndarray, independent_targets: Sequence[int] | np.ndarray | None = None
                ) -> dict[str, float]:
    """The fooling gap of guided samples (docs/classifiers.md): the share the guide calls its target minus the
    share an independent classifier (one that did not guide them) calls it, on the same samples.

    guide_pred / independent_pred: [N] predicted class indices; targets: [N] the guide's target classes;
    independent_targets: [N] the same classes in the independent classifier's indexing (default `targets`).
    Returns {"guided_accuracy", "independent_accuracy", "fooling_gap"} (floats). `higfa check-classifier`
    and the quality bench's `fooling_gap` are this number."""
    targets = np.asarray(targets, dtype=np.int64)
    other = targets if independent_targets is None else np.asarray(independent_targets, dtype=np.int64)
    guided = float((np.asarray(guide_pred) == targets).mean())
    independent = float((np.asarray(independent_pred) == other).mean())
    return {"guided_accuracy": guided, "independent_accuracy": independent, "fooling_gap": guided - independent}
