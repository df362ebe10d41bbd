"""The judge [ours]: a classifier that did not guide the images measures their confidence.

A guide's confidence on the images it pushed is not evidence: its gradient buys its own verdict
(an adversarial pattern), and adversarial patterns transfer weakly to a differently trained network.
So a second classifier in the sidecar format (`higfa.classifier`) judges: inside sampling its
p(target) on the decoded x̂0 drives the ramp, the gate and `measure_every` (`Guide(..., judge=...)`,
docs/method.md "The judge"), and after sampling it keeps or drops the finished images
(`confidence_filter`, the one confidence filter of the pack: HiGFA Confidence Filter, the CLI, the bench).

Shapes: images [B,3,H,W] float in [0,1]; targets one class index, or [B]; confidences [B].
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .classifier import find_name
from .guidance import Costs, Views, measure

Classify = Callable[[torch.Tensor], torch.Tensor]  # image [B,3,H,W] in [0,1] -> logits [B,K]

# A judge's view draw at step k uses this seed offset from the guide's (1_000_003·(k+1) + inner iteration, the
# iteration < 64): its own draw, never one of the guide's, so a judge with views does not see the guide's crops.
JUDGE_VIEW_SEED = 500_009


def judge_view_seed(step: int) -> int:
    """The seed of the judge's views at sampling step `step` (distinct from every guide draw)."""
    return 1_000_003 * (step + 1) + JUDGE_VIEW_SEED


def confidence(image: torch.Tensor, judge: Classify, target: int | Sequence[int] | torch.Tensor, *,
               views: Views | None = None, autocast: torch.dtype | None = None, costs: Costs | None = None
               ) -> torch.Tensor:
    """The judge's p(target) per sample on decoded images, no gradient: one batched forward of K views.

    image [B,3,H,W] in [0,1]; target a class index or [B]; views as the guide's (`Views`; None: the image
    itself). p = mean_k softmax(f(view_k))[y], computed as the guide's own p (`guidance.measure`), so a
    judge equal to the guide, with one view, gives the guide's p bit for bit. `autocast` as in `measure`
    (a non-finite p reruns in float32). The forward's time is added to `costs.classifier_forward`.
    Returns p [B] float32 on the CPU.
    """
    started = time.perf_counter()
    tgt = torch.as_tensor(target).long().reshape(-1).to(image.device)
    m = measure(image, _identity, judge, tgt, grad=False, views=views, autocast=autocast)
    if costs is not None:
        if image.is_cuda:
            torch.cuda.synchronize()
        costs.add("classifier_forward", time.perf_counter() - started)
    return m.p.float().cpu()


def _identity(image: torch.Tensor) -> torch.Tensor:
    return image


def map_targets(targets: Sequence[int], class_names: Sequence[str] | None, judge_class_names: Sequence[str],
                what: str = "judge") -> list[int]:
    """The guide's target indices as the judge's indices, matched by class name (`find_name`: case, '_' and
    '-' insensitive). Without the guide's names the indices are taken as they are (checked against the judge).
    A class the judge does not know is a ValueError naming it and the fix."""
    out = []
    for t in targets:
        t = int(t)
        if class_names is None:
            if not 0 <= t < len(judge_class_names):
                raise ValueError(f"{what}: target class index {t} is out of range: the {what} has "
                                 f"{len(judge_class_names)} classes; use a {what} trained on the guide's classes")
            out.append(t)
            continue
        name = class_names[t]
        found = find_name(name, judge_class_names)
        if found is None:
            shown = list(judge_class_names[:10]) + (["..."] if len(judge_class_names) > 10 else [])
            raise ValueError(f"{what}: the target class {name!r} is not one of the {what}'s classes {shown}: "
                             f"connect a {what} trained on the same classes as the guide (class names must match)")
        out.append(found)
    return out


@dataclass
class Filtered:
    """What `confidence_filter` decides: the judge's p(target) per image [N] (float32, CPU), and the indices
    of the kept (p ≥ threshold) and dropped images, in input order."""

    confidence: torch.Tensor
    kept: list[int]
    dropped: list[int]
    threshold: float

    def summary(self) -> str:
        n = len(self.kept) + len(self.dropped)
        return f"kept {len(self.kept)} of {n} images (judge's p(target) >= {self.threshold:g})"


def scores(images: torch.Tensor, judge: Classify, targets: int | Sequence[int] | torch.Tensor, *,
           batch_size: int | None = None) -> torch.Tensor:
    """The judge's p(target) = softmax(f(image))[y] per finished image, no gradient, no views.

    images [N,3,H,W] float in [0,1] on the judge's device; targets one index or [N]; batch_size: images per
    forward (None: all in one, as `higfa augment` scores a group). Returns [N] float32 on the CPU."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N,3,H,W] in [0,1], got shape {tuple(images.shape)}")
    n = images.shape[0]
    tgt = torch.as_tensor(targets).long().reshape(-1)
    if len(tgt) == 1:
        tgt = tgt.expand(n)
    if len(tgt) != n:
        raise ValueError(f"{len(tgt)} targets for {n} images: give one target, or one per image")
    step = n if not batch_size else int(batch_size)
    out = []
    with torch.no_grad():
        for i in range(0, n, max(step, 1)):
            p = torch.softmax(judge(images[i:i + step]).float(), -1)
            out.append(p[torch.arange(p.shape[0]), tgt[i:i + step].to(p.device)].cpu())
    return torch.cat(out) if out else torch.zeros(0)


def confidence_filter(images: torch.Tensor, judge: Classify, targets: int | Sequence[int] | torch.Tensor,
                      threshold: float, *, batch_size: int | None = None) -> Filtered:
    """Keep the images the judge believes: p(target) ≥ threshold (`scores`). images [N,3,H,W] in [0,1].

    The judge should be a classifier that did not guide these images (the guide believes its own pushes)."""
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold}: a confidence threshold is a probability in [0, 1]")
    p = scores(images, judge, targets, batch_size=batch_size)
    keep = (p >= threshold).tolist()
    return Filtered(p, [i for i, k in enumerate(keep) if k], [i for i, k in enumerate(keep) if not k], threshold)
