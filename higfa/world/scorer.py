"""The independent scorer: a second many-shot classifier of the built-in world that never guides.

A classifier that guided an image cannot score it: guidance climbs its gradient, so its own
verdict (and that of any classifier trained like it) is inflated (docs/quality.md, "fooling
gap"). The oracle is also usable as a guide for diagnosis (`--classifier oracle.safetensors`), so
the quality bench scores fidelity with this scorer instead, which differs from both the oracle and
the few-shot guide in every way we can choose:

- architecture: timm `test_convnext` (ConvNeXt blocks, patchify stem; the oracle is a ResNet-10t,
  the guide a `test_resnet`), 0.2 M parameters, stored in float16 (~0.4 MB); finebirds: `test_byobnet`
  (SCORER_DEFAULTS);
- data: images 200..399 of every species of the world's `train` split (the oracle saw 0..199,
  the guide the `fewshot` split; finebirds: 500..799, its oracle saw 0..499), other initialisation and batch seeds;
- augmentation: geometric plus Gaussian blur (σ up to 1.5 px; finebirds 1.0) and pixel noise (σ up to 0.05),
  so that the diffusion model's softer samples are not out of distribution for it. The bench
  checks it on real test images blurred to the samples' measured sharpness.

`python -m higfa.world.scorer [--world finebirds]` retrains it into the world's assets (tinybirds:
higfa/world/assets/scorer.safetensors, + .json sidecar, + scorer_training.json with the settings and test
accuracies): one cosine cycle of 2000 steps (about 3 CPU-minutes); more phases (`ScorerConfig.phases`)
warm-start from the previous one (finebirds: three, SCORER_DEFAULTS).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..classifier import Classifier, build_classifier, load_classifier, save_classifier
from ..training import Augment, evaluate, train_classifier
from .birds import ASSETS
from .catalog import assets, make_world
from .train_common import for_world
from .metrics import blur_images

SCORER = "scorer.safetensors"


@dataclass(frozen=True)
class ScorerConfig:
    architecture: str = "test_convnext"
    first_image: int = 200  # per species: train-split images [first_image, first_image + per_class)
    per_class: int = 200
    phases: tuple = ((2000, 3e-3),)  # (steps, peak lr): a cosine cycle each, each warm-starting the next
    batch_size: int = 64
    blur: float = 1.5
    noise: float = 0.05
    seed: int = 4242
    world_seed: int = 0
    world: str = "tinybirds"  # catalog.WORLDS
    model_kwargs: dict = field(default_factory=dict)  # extra timm.create_model arguments (kept in the sidecar)


# Each world's scorer settings over ScorerConfig's (which are tinybirds'), as train_common.WORLD_DEFAULTS does for
# the world's training; `first_image` always follows the world's oracle_per_class (scorer_for_world).
# finebirds differs because tinybirds' config (test_convnext, 200 images per species, blur σ up to 1.5 px, 2000
# steps) read only 0.268 of its real test images (0.264 at σ 1 px): 48 species told apart by 1-2 px markings. The
# same ConvNeXt with a 2x2 stem (patch_size=2) still learnt slowly (loss 2.19 after 1700 of 2000 steps, 300 images
# per species, blur 1 px; stopped), so finebirds' scorer is timm `test_byobnet` (stride-2 stem, edge/dark/basic/
# bottleneck blocks with squeeze-excite, BatchNorm: neither the oracle's ResNet-10t nor the guide's test_resnet;
# 0.21 M parameters) on 300 images per species, blur σ up to 1 px as its oracle (the bench checks σ 0.5-1.0).
# Cycles warm-starting each other (`--resume <scorer.safetensors> --skip-phases k` continues after k), measured on
# the 2400 real test images at blur σ 0 / 0.5 / 1 / 1.5 px: 2000 steps 0.896 / 0.906 / 0.820 / 0.474; +1200
# steps 0.933 / 0.941 / 0.873 / 0.544; +1500 steps (shipped) 0.963 / 0.970 / 0.920 / 0.623. About 12 CPU-minutes
# on one thread in one run (5.5, ~3.8 (estimated) and 4.1 minutes as three runs, each rendering its 14400 images again).
SCORER_DEFAULTS: dict[str, dict] = {
    "tinybirds": {},
    "finebirds": dict(architecture="test_byobnet", per_class=300, phases=((2000, 3e-3), (1200, 2e-3), (1500, 1.5e-3)),
                      blur=1.0),
}


def scorer_for_world(world: str, **changes) -> ScorerConfig:
    """ScorerConfig for `world`: its images start where the oracle's end (train_common.for_world), then its
    SCORER_DEFAULTS, then `changes`."""
    if world not in SCORER_DEFAULTS:
        raise ValueError(f"unknown world {world!r} for the scorer: choose one of {sorted(SCORER_DEFAULTS)}")
    return ScorerConfig(**{"world": world, "first_image": for_world(world).oracle_per_class,
                           **SCORER_DEFAULTS[world], **changes})


def own_images(world, first_image: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Train-split images [first_image, first_image + per_class) of every species: (uint8 [N,H,W,3], labels [N]),
    class-major. Exactly `world.split("train", first_image + per_class)`'s images without the first ones: a split's
    i-th image of a class depends on (world seed, split, class, i) alone, so only these are drawn (finebirds: the
    oracle's 24000 are not rendered again)."""
    labels, seeds = world.split_seeds("train", first_image + per_class)
    keep = np.tile(np.arange(first_image + per_class) >= first_image, world.num_classes)
    labels = labels[keep]
    images = np.stack([world.render(int(c), int(s), masks=False).image for c, s in zip(labels, seeds[keep])])
    return images, labels


def train_scorer(cfg: ScorerConfig = ScorerConfig(), out: Path = ASSETS, log=print, resume: Path | None = None,
                 skip_phases: int = 0) -> dict:
    """Train the scorer, write `<out>/scorer.safetensors` (+ sidecar) and `<out>/scorer_training.json`.
    resume/skip_phases: start from a saved scorer that finished the first `skip_phases` phases."""
    world = make_world(cfg.world, seed=cfg.world_seed)
    images, labels = own_images(world, cfg.first_image, cfg.per_class)
    torch.manual_seed(cfg.seed)
    clf = build_classifier(cfg.architecture, world.class_names, world.image_size, mean=(0.5,) * 3, std=(0.5,) * 3,
                           **cfg.model_kwargs)
    if resume is not None:
        clf = load_scorer(resume)
    test = world.split("test", 50)
    started = time.perf_counter()
    info = {"config": asdict(cfg), "train_images": int(len(labels)), "phases": []}
    for k, (steps, lr) in enumerate(cfg.phases):
        if k < skip_phases:
            continue
        clf = train_classifier(clf, images, labels, steps=steps, batch_size=cfg.batch_size, lr=lr, seed=cfg.seed + k,
                               augment=Augment(blur=cfg.blur, noise=cfg.noise),
                               callback=lambda s, loss, k=k, n=steps:
                               log(f"scorer phase {k} step {s}/{n} loss {loss:.3f}") if s % 100 == 0 else None
                               ).classifier
        acc = {f"blur_sigma_{sigma}": round(evaluate(clf, blur_images(test.images, sigma), test.labels)["accuracy"], 4)
               for sigma in (0.0, 0.5, 1.0, 1.5)}
        info["phases"].append({"steps": steps, "lr": lr, "test_accuracy": acc})
        log(f"scorer phase {k}: test accuracy {acc}")
        save_classifier(clf.half(), out / SCORER)  # a checkpoint per phase
        clf = clf.float()
    info["seconds"] = round(time.perf_counter() - started, 1)
    info["test_accuracy"] = info["phases"][-1]["test_accuracy"] if info["phases"] else None
    if skip_phases:
        info["resumed_after_phases"] = skip_phases
    (out / "scorer_training.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"scorer: {info}")
    return info


def load_scorer(path: str | Path = ASSETS / SCORER, device: str | torch.device = "cpu") -> Classifier:
    """The independent scorer in float32; a clear error when it was not trained yet."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"independent scorer not found: {path}. Train it with `python -m higfa.world.scorer`")
    return load_classifier(path, device).float()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m higfa.world.scorer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="tinybirds", help="which world (catalog.WORLDS; default tinybirds)")
    p.add_argument("--out", type=Path, default=None, help="folder for scorer.safetensors (default: the world's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", type=Path, help="a scorer that finished the first --skip-phases phases")
    p.add_argument("--skip-phases", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # its images start where the oracle's end (tinybirds: 200 per species), so the two never share one
    cfg = scorer_for_world(args.world)
    train_scorer(cfg, args.out or assets(args.world), resume=args.resume, skip_phases=args.skip_phases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
