"""The guides of the quality bench's arms: the world's own (shipped few-shot guide, oracle, a classifier file), a
second-round guide trained inside the run (`boot_guide`), and a guide PGD-tuned first (`tuned_guide`); the two
trained ones are cached beside the images under what decides them."""

from __future__ import annotations

import json
from pathlib import Path

# The second-round guide's recipe: the shipped guide's (docs/world.md: test_resnet, seed 20, noise/blur augmentation),
# on the real few-shot images + the first round's variants drawn SaSPA style, twice the steps (3 x the images).
BOOT = {"steps": 1000, "seed": 20, "noise": 0.03, "blur": 1.0}

# The tuned guide's recipe: `higfa tune-classifier` as it made the shipped guidance_robust (docs/world.md), on the
# few-shot images the guide already learnt from (no extra data).
TUNE = {"data": "builtin:fewshot", "epochs": 4, "views": 8, "lr": 3e-4, "seed": 0}


def load_guide(models, spec: str):
    """The classifier of a guide spec that names one: "guidance" (the shipped few-shot guide), "oracle", a path."""
    from higfa.classifier import load_classifier

    if spec == "guidance":
        return models.guidance
    if spec == "oracle":
        return models.oracle
    return load_classifier(spec).float()


def boot_guide(models, real, first_round: dict, alpha: float, cache: Path, key: dict):
    """A guide for a second round, from labels the few-shot set already has: `models.guidance`'s architecture
    trained from scratch on `real` (a Split) + `first_round`'s images (targets, source index into `real`) with
    SaSPA's replacement weights (`higfa train-classifier --synthetic` does the same on folders). Cached in
    `cache` (+ .key.json) under `key`."""
    import torch

    from higfa.classifier import build_classifier, load_classifier, save_classifier
    from higfa.jobs.evaluate import replacement_set
    from higfa.training import Augment, train_classifier

    if cached_under(cache, key):
        return load_classifier(cache).float()
    g = first_round
    x, y, w = replacement_set(real.images, real.labels, g["images"], g["targets"], g["source"], alpha)
    shipped = models.guidance
    torch.manual_seed(BOOT["seed"])
    clf = build_classifier(shipped.architecture, shipped.class_names, models.world.image_size, mean=(0.5,) * 3,
                           std=(0.5,) * 3)
    clf = train_classifier(clf, x, y, steps=BOOT["steps"], seed=BOOT["seed"], weights=w,
                           augment=Augment(noise=BOOT["noise"], blur=BOOT["blur"])).classifier
    save_classifier(clf.half(), cache)
    cache.with_suffix(".key.json").write_text(json.dumps(key, sort_keys=True))
    return clf.float()


def cached_under(cache: Path, key: dict) -> bool:
    """Is a guide written to `cache` by `boot_guide`/`tuned_guide` the one `key` describes (cache.key.json)?"""
    key_file = cache.with_suffix(".key.json")
    return cache.is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key


def tuned_guide(model: str, source: Path, eps: float, cache: Path, key: dict):
    """`source` (a classifier file) tuned by `higfa tune-classifier --adversarial eps` with TUNE's recipe on the
    world `model` (a folder or 'builtin'), written to `cache` (+ .json, + .key.json) and cached under `key`."""
    from higfa.classifier import load_classifier
    from higfa.jobs.cli import main as higfa

    if not cached_under(cache, key):
        rc = higfa(["tune-classifier", str(source), "--data", TUNE["data"], "--model", model, "--adversarial",
                    str(eps), "--epochs", str(TUNE["epochs"]), "--views", str(TUNE["views"]), "--lr", str(TUNE["lr"]),
                    "--seed", str(TUNE["seed"]), "--no-progress", "--out", str(cache.with_suffix(""))])
        if rc:
            raise RuntimeError(f"tune-classifier {source} exited with {rc}")
        cache.with_suffix(".key.json").write_text(json.dumps(key, sort_keys=True))
    return load_classifier(cache).float()


def tune_key(settings: dict) -> dict:
    """What a tuned guide is cached under: the arm's guide, tuning recipe and models (from its generation settings)."""
    return {"guide": settings["guide"], "tune": settings["tune"], "models": settings["models"]}
