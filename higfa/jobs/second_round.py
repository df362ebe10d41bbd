"""The second-round recipe (docs/classifiers.md): a guide for the next round of `higfa augment`, trained on the
real images plus a previous round's synthetic images (SaSPA's replacement: each real image drawn with
probability 1 - α, one of its variants with α), then optionally tuned on the model's own x̂0 with PGD. The one
implementation behind `higfa train-classifier --synthetic`, `higfa tune-classifier` and the quality bench's
boot / tuned guides.

    torch.manual_seed(seed); clf = build_classifier(arch, classes, size)        # the caller's fresh model
    trained = train_on_round(clf, real_images, real_labels, Round(images, labels, source), alpha=0.4,
                             steps=1000, seed=seed, augment=Augment(noise=0.03, blur=1.0)).classifier
    tuned = tune_guide(trained, "builtin", "builtin:fewshot", TuneRecipe(epochs=4, adversarial=0.031)).classifier
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..classifier import Classifier
from .. import training
from ..training import Augment, TrainResult
from .tuning import TuneRecipe, Tuned, tune_guide

__all__ = ["Round", "TuneRecipe", "Tuned", "second_round_guide", "train_on_round", "tune_guide"]


@dataclass
class Round:
    """A previous round's synthetic images of the real training images."""

    images: np.ndarray  # [M,H,W,3] uint8
    labels: np.ndarray  # [M] class indices (the classifier's)
    source: np.ndarray  # [M] index of each image's real source image in the real set


def train_on_round(classifier: Classifier, real_images: np.ndarray, real_labels: np.ndarray, synthetic: Round, *,
                   alpha: float, steps: int, seed: int, augment: Augment | None,
                   **train_kwargs: Any) -> TrainResult:
    """Train `classifier` (in place) on real [N,H,W,3] uint8 + `synthetic` with SaSPA's replacement weights
    (`higfa.jobs.evaluate.replacement_set`: the same draw as `higfa evaluate`), by
    `higfa.training.train_classifier` (steps, seed, augment — None: none — and any of its other options)."""
    from .evaluate import check_alpha, replacement_set

    check_alpha(alpha)
    x, y, w = replacement_set(real_images, np.asarray(real_labels), synthetic.images, np.asarray(synthetic.labels),
                              np.asarray(synthetic.source), alpha)
    return training.train_classifier(classifier, x, y, steps=steps, seed=seed, weights=w, augment=augment,
                                     **train_kwargs)


def second_round_guide(classifier: Classifier, real_images: np.ndarray, real_labels: np.ndarray, synthetic: Round, *,
                       alpha: float, steps: int, seed: int, augment: Augment | None, model: str | None = None,
                       data: str | None = None, tune: TuneRecipe | None = None, device: str = "cpu",
                       progress: bool = False) -> Classifier:
    """`train_on_round`, then with `tune` (and the diffusion `model` and the labelled `data` spec it tunes
    on) `tune_guide`: the whole recipe in one call. Returns the trained (and tuned) classifier."""
    trained = train_on_round(classifier, real_images, real_labels, synthetic, alpha=alpha, steps=steps, seed=seed,
                             augment=augment, progress=progress).classifier
    if tune is None:
        return trained
    if model is None or data is None:
        raise ValueError("second_round_guide: tuning needs the diffusion model and the labelled data to tune on")
    return tune_guide(trained, model, data, tune, device=device, progress=progress).classifier
