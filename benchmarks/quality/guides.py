"""The guides of the quality bench's arms: the world's own (shipped few-shot guide, oracle, a classifier file), a
second-round guide trained inside the run (`boot_guide`), and a guide PGD-tuned first (`tuned_guide`); the two
trained ones are cached beside the images under what decides them."""

from __future__ import annotations

import json
from pathlib import Path

from higfa.classifier import build_classifier, load_classifier, provenance, save_classifier

# The second-round guide's recipe: the shipped guide's (docs/world.md: test_resnet, seed 20, noise/blur augmentation),
# on the real few-shot images + the first round's variants drawn SaSPA style, twice the steps (3 x the images).
BOOT = {"steps": 1000, "seed": 20, "noise": 0.03, "blur": 1.0}

# The tuned guide's recipe: `higfa tune-classifier` as it made the shipped guidance_robust (docs/world.md), on the
# few-shot images the guide already learnt from (no extra data).
TUNE = {"data": "builtin:fewshot", "epochs": 4, "views": 8, "lr": 3e-4, "seed": 0}


def load_guide(models, spec: str):
    """The classifier of a guide spec that names one: "guidance" (the shipped few-shot guide), "oracle", a path."""
    if spec == "guidance":
        return models.guidance
    if spec == "oracle":
        return models.oracle
    return load_classifier(spec, models.device).float()


def boot_guide(models, real, first_round: dict, alpha: float, cache: Path, key: dict):
    """A guide for a second round, from labels the few-shot set already has: `models.guidance`'s architecture
    trained from scratch with BOOT's recipe on `real` (a Split) + `first_round`'s images (targets, source index
    into `real`) with SaSPA's replacement weights, by `higfa.jobs.second_round.train_on_round` (what `higfa
    train-classifier --synthetic` runs on folders). Cached in `cache` (+ .key.json) under `key`. Trained and
    returned on `models.device` (initialised on the CPU: the same start everywhere; on CUDA in float32, amp off,
    the protocol's downstream precision)."""
    import torch

    from higfa.jobs.second_round import Round, train_on_round
    from higfa.training import Augment

    device = models.device
    if cached_under(cache, key):
        return load_classifier(cache, device).float()
    g = first_round
    shipped = models.guidance
    torch.manual_seed(BOOT["seed"])
    clf = build_classifier(shipped.architecture, shipped.class_names, models.world.image_size, mean=(0.5,) * 3,
                           std=(0.5,) * 3)
    on_gpu = {} if device.type == "cpu" else {"amp": False}  # the CPU's call as before
    clf = train_on_round(clf.to(device), real.images, real.labels, Round(g["images"], g["targets"], g["source"]),
                         alpha=alpha, steps=BOOT["steps"], seed=BOOT["seed"],
                         augment=Augment(noise=BOOT["noise"], blur=BOOT["blur"]), **on_gpu).classifier
    save_classifier(clf.half().cpu(), cache)
    cache.with_suffix(".key.json").write_text(json.dumps(key, sort_keys=True))
    return clf.float().to(device)


def cached_under(cache: Path, key: dict) -> bool:
    """Is a guide written to `cache` by `boot_guide`/`tuned_guide` the one `key` describes (cache.key.json)?"""
    key_file = cache.with_suffix(".key.json")
    return cache.is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key


def tuned_guide(model: str, source: Path, eps: float, cache: Path, key: dict):
    """`source` (a classifier file) tuned with TUNE's recipe and PGD ε `eps` on the world `model` (a folder,
    'builtin' or a world's name) and the few-shot data `key` names (`tune_key`: the arm's tune settings) by
    `higfa.jobs.tuning.tune_guide` (what `higfa tune-classifier --adversarial eps` runs), on the device `key` names
    (the CPU unless the run's is a GPU), written to `cache` (+ .json with the provenance that command records, +
    .key.json) and cached under `key`; returned on that device."""
    import torch

    from higfa.jobs.tuning import TuneRecipe, tune_guide

    device = torch.device(key.get("device", "cpu"))
    if not cached_under(cache, key):
        recipe = TuneRecipe(views=TUNE["views"], epochs=TUNE["epochs"], lr=TUNE["lr"], seed=TUNE["seed"],
                            adversarial=eps)
        data = key["tune"].get("data", TUNE["data"])
        done = tune_guide(load_classifier(source, device), model, data, recipe, device=device, progress=False)
        tuned = done.classifier
        tuned.provenance = provenance(data, tuned.class_names, None, command="tune-classifier",
                                      tuned_from=str(source), model=model, views=recipe.views,
                                      stage_boundary=done.stage_boundary, adversarial=eps, epochs=recipe.epochs,
                                      steps=done.steps, lr=recipe.lr, seed=recipe.seed, val_data=None)
        save_classifier(tuned.cpu(), cache)
        cache.with_suffix(".key.json").write_text(json.dumps(key, sort_keys=True))
    return load_classifier(cache, device).float()


def tune_key(settings: dict) -> dict:
    """What a tuned guide is cached under: the arm's guide, tuning recipe and models (from its generation
    settings), and on a GPU its device (a CPU run's key as before)."""
    return {"guide": settings["guide"], "tune": settings["tune"], "models": settings["models"]} | (
        {"device": settings["device"]} if "device" in settings else {})
