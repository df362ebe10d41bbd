"""The arms of the quality bench (benchmarks/quality.py): presets, extra arms, overrides, the generation cache key."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from higfa.contour import ContourTransform
from higfa.schedule import PRESETS as SCHEDULE_PRESETS
from higfa.schedule import Schedule
from higfa.world.birds import ASSETS

# the arms every run has (--presets); an --extra arm may start from any schedule preset (higfa.schedule.PRESETS)
PRESETS = ("cfg", "contour", "classifier-all-steps", "higfa", "higfa-robust")
# What decodes x̂0 on the classifier path in every bench arm (the quality bench, guidance_options): the world VAE,
# whatever the world's own default (tiny_decoder.GUIDANCE_DEFAULT), so the quality results measure the method.
BENCH_DECODER = "vae"


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    preset: str
    overrides: dict
    # guidance (the shipped few-shot guide) | oracle (diagnosis only) | a classifier path | boot:ARM (a second-round
    # guide: the shipped guide's architecture trained on the few-shot images + ARM's images, `boot_guide`)
    guide: str = "guidance"
    # the confidence filter downstream: a classifier file other than the guide, and the threshold on its p(target)
    filter: str | None = None
    filter_threshold: float = 0.5
    # PGD ε: the guide is first tuned by `higfa tune-classifier --adversarial ε` (TUNE's recipe, `tuned_guide`)
    tune: float | None = None

    @property
    def boot_of(self) -> str | None:
        """The first-round arm whose images train this arm's guide (guide=boot:ARM), else None."""
        return self.guide[5:] if self.guide.startswith("boot:") else None

    @property
    def guide_key(self) -> str:
        """The guide as this run builds it: the guide spec, plus the tuning when there is one."""
        return self.guide if self.tune is None else f"{self.guide}+tune={self.tune}"


def guide_file(guide: str, models_path: Path) -> Path:
    """The classifier file of a guide spec that names one: the world's shipped guide ("guidance") or a path."""
    return models_path / "guidance.safetensors" if guide == "guidance" else Path(guide)


def _extra(item: str, base: dict, models_path: Path = ASSETS) -> Arm:
    """NAME=PRESET[,FIELD=VALUE...][,guide=G][,tune=EPS][,filter=PATH[,filter_threshold=T]] -> Arm (guides and
    filters named by file are compared with the world in `models_path`)."""
    name, _, rest = item.partition("=")
    parts = [x for x in rest.split(",") if x]
    if not name or not parts or parts[0] not in SCHEDULE_PRESETS:
        raise ValueError(f"--extra {item!r}: use NAME=PRESET[,FIELD=VALUE...][,guide=oracle|PATH|boot:ARM]"
                         f"[,tune=EPS][,filter=PATH] with a preset of {list(SCHEDULE_PRESETS)}")
    own = {k: x.partition("=")[2] for x in parts[1:] for k in ("guide", "filter", "filter_threshold", "tune")
           if x.startswith(k + "=")}
    fields = [x for x in parts[1:] if x.partition("=")[0] not in own]
    tune = None
    if "tune" in own:
        try:
            tune = float(own["tune"])
        except ValueError:
            tune = float("nan")
        if not tune >= 0:  # NaN (not a number) fails too
            raise ValueError(f"--extra {item!r}: tune={own['tune']} must be a PGD ε >= 0 (0: tuned without PGD)")
    arm = Arm(name, parts[0], base | _overrides(fields), own.get("guide", "guidance"), own.get("filter"),
              float(own.get("filter_threshold", 0.5)), tune)
    if arm.tune is not None and arm.guide == "oracle":
        raise ValueError(f"--extra {item!r}: tune= tunes a guide the product could have; the oracle is diagnosis only")
    if arm.boot_of == name:
        raise ValueError(f"--extra {item!r}: guide=boot:ARM names the first-round arm whose images train the guide, "
                         "not the arm itself")
    if arm.filter is not None and (arm.filter == "oracle" or
                                   Path(arm.filter).resolve() == guide_file(arm.guide, models_path).resolve()):
        raise ValueError(f"--extra {item!r}: filter={arm.filter} must be a classifier that did not guide the arm "
                         "and is not the world oracle (it scores)")
    return arm


def _overrides(items, option: str = "--set") -> dict:
    """FIELD=VALUE items -> typed Schedule overrides; a bad item is named with the option it came from."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        default = getattr(Schedule(), name, None)
        if default is None or not value:
            raise ValueError(f"{option} {item!r}: use FIELD=VALUE with a Schedule field")
        out[name] = (value.lower() == "true") if isinstance(default, bool) else type(default)(value)
    return out


def _sweeps(items) -> list[tuple[str, list]]:
    """--sweep FIELD=V1,V2,... -> [(field, [typed values])]."""
    out = []
    for item in items:
        name, _, values = item.partition("=")
        typed = [_overrides([f"{name}={v}"])[name] for v in values.split(",") if v] if values else []
        if not typed:
            raise ValueError(f"--sweep {item!r}: use FIELD=V1,V2,... with a Schedule field")
        out.append((name, typed))
    return out


@functools.lru_cache(maxsize=8)
def models_digest(folder: Path) -> str:
    """sha256 (16 hex) of what generates and guides in a world models folder: the diffusers parts, the
    shipped guide and the oracle. Not the tiny decoder (the bench guides with the VAE, `BENCH_DECODER`) nor
    training checkpoints: weights the bench does not use. Cached images and downstream runs are keyed by it,
    so retrained weights (`make train-world`) never reuse images of the old ones."""
    from higfa.world.tiny_decoder import FOLDER

    skip = {"checkpoints", FOLDER}
    h = hashlib.sha256()
    parts = [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name not in skip] + [
        folder / "guidance.safetensors", folder / "oracle.safetensors"]
    for part in parts:
        for f in sorted([part] if part.is_file() else part.rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(folder)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


# The second-round guide's recipe: the shipped guide's (docs/world.md: test_resnet, seed 20, noise/blur augmentation),
# on the real few-shot images + the first round's variants drawn SaSPA style, twice the steps (3 x the images).
BOOT = {"steps": 1000, "seed": 20, "noise": 0.03, "blur": 1.0}


def boot_guide(models, real, first_round: dict, alpha: float, cache: Path, key: dict):
    """A guide for a second round, from labels the few-shot set already has: `models.guidance`'s architecture
    trained from scratch on `real` (a Split) + `first_round`'s images (targets, source index into `real`) with
    SaSPA's replacement weights (`higfa train-classifier --synthetic` does the same on folders). Cached in
    `cache` (+ .key.json) under `key`."""
    import torch

    from higfa.classifier import build_classifier, load_classifier, save_classifier
    from higfa.jobs.evaluate import replacement_set
    from higfa.training import Augment, train_classifier

    if _cached_under(cache, key):
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


def _cached_under(cache: Path, key: dict) -> bool:
    """Is a guide written to `cache` by `boot_guide`/`tuned_guide` the one `key` describes (cache.key.json)?"""
    key_file = cache.with_suffix(".key.json")
    return cache.is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key


# The tuned guide's recipe: `higfa tune-classifier` as it made the shipped guidance_robust (docs/world.md), on the
# few-shot images the guide already learnt from (no extra data).
TUNE = {"data": "builtin:fewshot", "epochs": 4, "views": 8, "lr": 3e-4, "seed": 0}


def tuned_guide(model: str, source: Path, eps: float, cache: Path, key: dict):
    """`source` (a classifier file) tuned by `higfa tune-classifier --adversarial eps` with TUNE's recipe on the
    world `model` (a folder or 'builtin'), written to `cache` (+ .json, + .key.json) and cached under `key`."""
    from higfa.classifier import load_classifier
    from higfa.jobs.cli import main as higfa

    if not _cached_under(cache, key):
        rc = higfa(["tune-classifier", str(source), "--data", TUNE["data"], "--model", model, "--adversarial",
                    str(eps), "--epochs", str(TUNE["epochs"]), "--views", str(TUNE["views"]), "--lr", str(TUNE["lr"]),
                    "--seed", str(TUNE["seed"]), "--no-progress", "--out", str(cache.with_suffix(""))])
        if rc:
            raise RuntimeError(f"tune-classifier {source} exited with {rc}")
        cache.with_suffix(".key.json").write_text(json.dumps(key, sort_keys=True))
    return load_classifier(cache).float()


def _gen_settings(args, arm: Arm) -> dict:
    guide = arm.guide
    if arm.boot_of is None and guide not in ("guidance", "oracle"):  # boot:ARM: keyed in quality.main
        guide = f"{guide}#{hashlib.sha256(Path(guide).read_bytes()).hexdigest()[:16]}"
    out = {"shots": args.shots, "per_source": args.per_source, "steps": args.steps, "batch": args.batch,
           "seed": args.seed, "contour_transform": ContourTransform().to_dict(), "preset": arm.preset,
           "schedule_overrides": arm.overrides, "guide": guide,
           "models": f"{args.models or 'shipped'}#{models_digest(Path(args.models or ASSETS).resolve())}"}
    if arm.tune is not None:  # only tuned arms carry it: the others keep their cached images
        out["tune"] = TUNE | {"adversarial": arm.tune}
    if arm.filter is not None:  # only filtered arms carry it: the others keep their cached images
        out["filter"] = [f"{arm.filter}#{hashlib.sha256(Path(arm.filter).read_bytes()).hexdigest()[:16]}",
                         arm.filter_threshold]
    return out


def _images_key(settings: dict) -> dict:
    """What decides an arm's images: its settings but the confidence filter (it acts after generation)."""
    return {k: v for k, v in settings.items() if k != "filter"}


def _cache_ok(cache: Path, settings: dict) -> bool:
    if not cache.is_file():
        return False
    try:
        meta = json.loads(str(np.load(cache)["meta"]))
    except Exception:
        return False
    return meta.get("settings") == settings
