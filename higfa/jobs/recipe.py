"""`higfa augment --rounds 2`: the second-round recipe in one command (docs/classifiers.md, docs/quality.md).

    OUT/round1/                    round 1: `higfa augment` as without --rounds (your guide, your preset)
    OUT/guides/round2_guide.*      a fresh classifier of the first guide's architecture trained on the real images
                                   + round 1 with SaSPA's replacement weights (`second_round.train_on_round`)
    OUT/guides/round2_tuned.*      that guide PGD-tuned on the model's x̂0 of the real images (`tune_guide`)
    OUT/round2/                    round 2: guided by the tuned guide and JUDGED by the first guide (`--judge`: the
                                   first guide's p drives the ramp and the gate), with `--round2-preset`
                                   (default higfa-judged); with `--round2-filter T` the first guide's p(target) < T
                                   on a finished image sets it aside in OUT/round2/dropped/ (marked in the manifest)
    OUT/recipe.json                the recipe's settings (a rerun with others is refused without --overwrite)

Each stage is cached and resumable: the rounds are `higfa augment` runs (fingerprinted by run.json), the guide's
training writes a checkpoint every epoch and resumes from it, and each guide file has a `.key.json` of what made it
(the round-1 run, the first guide's content, the real data, the recipe); a stage whose key differs is refused
(or, with --overwrite, redone). Why a command option and not a command of its own: round 1 and round 2 are
`higfa augment` runs with every one of its options, and the recipe adds only what joins them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import records
from .safety import file_digest
from .settings import AugmentSettings

RECIPE_FILE = "recipe.json"
KEY_SUFFIX = ".key.json"


@dataclass(frozen=True)
class RecipeSettings:
    """The second round's options (`higfa augment --rounds 2`); defaults: the measured recipe (docs/quality.md:
    the bench's boot guide, BOOT, and its tuned guide, TUNE with ε 0.031)."""

    preset: str = "higfa-judged"  # round 2's schedule preset
    filter: float | None = None  # round 2: the first guide's p(target) threshold on the finished images
    alpha: float = 0.4  # SaSPA replacement probability (a real image replaced by one of its variants)
    guide_steps: int = 1000
    guide_seed: int = 20
    guide_augment: str = "robust"
    tune_epochs: int = 4
    tune_views: int = 8
    tune_lr: float = 3e-4
    adversarial: float = 0.031  # PGD ε of the tuning (0: tuned without PGD)
    tune_seed: int = 0

    def validate(self) -> "RecipeSettings":
        from ..schedule import PRESETS, Schedule
        from .guides import augment_preset

        if self.preset not in PRESETS:
            raise ValueError(f"--round2-preset {self.preset}: choose one of {list(PRESETS)}")
        if not Schedule.from_preset(self.preset).uses_classifier:
            raise ValueError(f"--round2-preset {self.preset}: round 2 is guided by the second-round guide; choose a "
                             "preset with classifier guidance (e.g. higfa-judged)")
        if self.filter is not None and not 0.0 <= self.filter <= 1.0:
            raise ValueError(f"--round2-filter {self.filter}: a confidence threshold is a probability in [0, 1]")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"--alpha {self.alpha}: the replacement probability must lie in [0, 1]")
        for name in ("guide_steps", "tune_epochs", "tune_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if not self.adversarial >= 0 or not self.tune_lr > 0:
            raise ValueError(f"--adversarial {self.adversarial} must be >= 0 and --tune-lr {self.tune_lr} > 0")
        augment_preset(self.guide_augment)
        return self


def check_first_round(s: AugmentSettings) -> None:
    """What --rounds 2 cannot take, before anything is written."""
    if s.judge:
        raise ValueError("--judge with --rounds 2: round 2's judge is your first guide (--classifier), and round 1 is "
                         "today's augment; run round 1 with --judge as its own command if you want both")
    if s.min_confidence is not None:
        raise ValueError("--min-confidence with --rounds 2: the guide's own confidence would filter round 1; use "
                         "--round2-filter T (the first guide's p on round 2's images)")
    if s.shard:
        raise ValueError("--shard with --rounds 2: the guide stages run in one process; run round 1 sharded as its "
                         "own `higfa augment`, then --rounds 2 with the same settings resumes from it")


def run_recipe(s: AugmentSettings, r: RecipeSettings) -> int:
    """Round 1, the second-round guide (trained, then PGD-tuned), round 2 judged (and optionally filtered) by
    the first guide. Returns the exit status of the last round run (0: done)."""
    from .distributed import detect_ranks
    from .job import run_augment
    from .model_path import default_builtin_classifier, is_builtin
    from .safety import check_folders

    s.validate()
    r.validate()
    check_first_round(s)
    if detect_ranks().world_size > 1:
        raise ValueError("--rounds 2 runs in one process (the guide stages are not sharded): run round 1 under "
                         "torchrun as its own `higfa augment`, then --rounds 2 in one process resumes from it")
    out = Path(s.out).expanduser()
    check_folders(Path(s.data).expanduser(), out)
    first_guide = s.classifier or (default_builtin_classifier(s.model) if is_builtin(s.model) else None)
    if not first_guide:
        raise ValueError("--rounds 2 needs --classifier (your first guide: it guides round 1 and judges round 2)")
    claim(out, s, r)
    rc = run_augment(dataclasses.replace(s, out=out / "round1"))
    if rc:
        return rc
    say = (lambda m: None) if s.quiet else (lambda m: print(m, flush=True))
    guide = train_stage(s, r, out, Path(first_guide), say)
    tuned = tune_stage(s, r, out, guide, say)
    second = dataclasses.replace(
        s, out=out / "round2", classifier=str(tuned), judge=str(first_guide), preset=r.preset, schedule=None,
        min_confidence=r.filter, filter="aside" if r.filter is not None else s.filter, filter_classifier=None)
    return run_augment(second)


def recipe_fingerprint(s: AugmentSettings, r: RecipeSettings) -> dict[str, Any]:
    return {"recipe": dataclasses.asdict(r), "first_round": {k: str(v) for k, v in dataclasses.asdict(s).items()
                                                             if k not in ("out", "overwrite", "progress", "quiet",
                                                                          "threads", "device")}}


def claim(out: Path, s: AugmentSettings, r: RecipeSettings) -> None:
    """OUT/recipe.json: this recipe's settings. Another recipe's folder is refused without --overwrite; a
    folder that is not a recipe's (and not empty) is always refused."""
    fp = recipe_fingerprint(s, r)
    path = out / RECIPE_FILE
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()) and not path.is_file():
        raise ValueError(f"output folder {out} is not empty and was not written by `higfa augment --rounds 2`: "
                         "choose an empty or new --out")
    if path.is_file():
        before = json.loads(path.read_text()).get("fingerprint", {})
        if before != fp and not s.overwrite:
            diff = [f"{k}: {before.get(part, {}).get(k)} -> {fp[part].get(k)}" for part in fp
                    for k in sorted(set(before.get(part, {})) | set(fp[part]))
                    if before.get(part, {}).get(k) != fp[part].get(k)]
            raise ValueError(f"output folder {out} holds a different two-round run (differs in "
                             f"{'; '.join(diff[:4])}). Use another --out, rerun with the same settings to resume, or "
                             "pass --overwrite to redo every stage")
    out.mkdir(parents=True, exist_ok=True)
    records.write_json(path, {"hash": records.fingerprint_hash(fp), "fingerprint": fp})


def stage_key(path: Path, key: dict[str, Any], overwrite: bool) -> bool:
    """Is the guide at `path` (+ .key.json) the one `key` describes? A different one is refused unless
    `overwrite` (then it is redone: False)."""
    key_file = path.with_name(path.stem + KEY_SUFFIX)
    if not path.is_file() or not key_file.is_file():
        return False
    if json.loads(key_file.read_text()) == key:
        return True
    if overwrite:
        return False
    raise ValueError(f"{path} was made from other inputs than this run's (see {key_file.name}); pass --overwrite "
                     "to make it again, or use another --out")


def train_stage(s: AugmentSettings, r: RecipeSettings, out: Path, first_guide: Path, say) -> Path:
    """The second-round guide: the first guide's architecture, fresh, trained on real + round 1 (SaSPA)."""
    import torch

    from ..classifier import build_classifier, load_classifier, provenance, save_classifier
    from .evaluate import load_synthetic, source_index, ImageSet
    from .guides import augment_preset
    from .labelled import read_labelled
    from .second_round import Round, train_on_round

    path = out / "guides" / "round2_guide.safetensors"
    run1 = json.loads((out / "round1" / records.RUN_FILE).read_text())["hash"]
    key = {"round1": run1, "first_guide": file_digest(first_guide), "data": str(Path(s.data).resolve()),
           "recipe": {k: getattr(r, k) for k in ("alpha", "guide_steps", "guide_seed", "guide_augment")}}
    if stage_key(path, key, s.overwrite):
        say(f"higfa augment --rounds 2: second-round guide cached: {path}")
        return path
    first = load_classifier(first_guide)
    real = read_labelled(s.data, first.input_size[0])
    y = real.targets(first.class_names)
    syn = load_synthetic(out / "round1", first.input_size[0], first.class_names)
    src = source_index(ImageSet(real.images, y, [], ids=real.ids), syn)
    say(f"higfa augment --rounds 2: training the second-round guide ({first.architecture}) on {len(y)} real + "
        f"{len(syn.labels)} round-1 images, {r.guide_steps} steps")
    torch.manual_seed(r.guide_seed)
    clf = build_classifier(first.architecture, first.class_names, first.input_size, first.mean.flatten().tolist(),
                           first.std.flatten().tolist(), **first.model_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = path.with_suffix(".ckpt")
    def train():  # a stale checkpoint is refused when it is read, before any weight changes
        return train_on_round(clf, real.images, y, Round(syn.images, syn.labels, src), alpha=r.alpha,
                              steps=r.guide_steps, seed=r.guide_seed, augment=augment_preset(r.guide_augment),
                              checkpoint=ckpt, checkpoint_every=max(1, -(-len(y) // 64)), run_config=key,
                              progress=s.progress and not s.quiet)

    try:
        done = train()
    except ValueError:
        if not (s.overwrite and ckpt.is_file()):
            raise  # a checkpoint of other inputs: the error names it and the fix
        ckpt.unlink()  # --overwrite: another run's checkpoint is not resumed
        done = train()
    clf = done.classifier
    clf.provenance = provenance(str(s.data), clf.class_names, None, command="augment --rounds 2 (guide)",
                                synthetic=str(out / "round1"), synthetic_images=len(syn.labels), alpha=r.alpha,
                                steps=r.guide_steps, seed=r.guide_seed, augment=r.guide_augment,
                                train_images=len(y), first_guide=str(first_guide))
    save_classifier(clf.cpu(), path.with_suffix(""))
    records.write_json(path.with_name(path.stem + KEY_SUFFIX), key)
    ckpt.unlink(missing_ok=True)
    return path


def tune_stage(s: AugmentSettings, r: RecipeSettings, out: Path, guide: Path, say) -> Path:
    """The second-round guide tuned on the model's x̂0 of the real images, with PGD (`tune_guide`)."""
    from ..classifier import load_classifier, provenance, save_classifier
    from .distributed import Ranks, pick_device
    from .tuning import TuneRecipe, tune_guide

    path = out / "guides" / "round2_tuned.safetensors"
    recipe = TuneRecipe(views=r.tune_views, epochs=r.tune_epochs, lr=r.tune_lr, adversarial=r.adversarial,
                        seed=r.tune_seed, prompt=s.prompt, super_name=s.super_name, negative=s.negative_prompt)
    key = {"guide": file_digest(guide), "model": s.model, "controlnet": s.controlnet,
           "data": str(Path(s.data).resolve()), "tune": dataclasses.asdict(recipe)}
    if stage_key(path, key, s.overwrite):
        say(f"higfa augment --rounds 2: tuned guide cached: {path}")
        return path
    say(f"higfa augment --rounds 2: tuning the second-round guide (PGD ε {r.adversarial}, {r.tune_epochs} epochs, "
        f"{r.tune_views} x̂0 views per image)")
    device = pick_device(s.device, Ranks())
    done = tune_guide(load_classifier(guide, device), s.model, str(s.data), recipe, controlnet=s.controlnet,
                      device=device, progress=s.progress and not s.quiet)
    tuned = done.classifier
    tuned.provenance = provenance(str(s.data), tuned.class_names, None, command="augment --rounds 2 (tune)",
                                  tuned_from=str(guide), model=str(s.model), views=r.tune_views,
                                  stage_boundary=done.stage_boundary, adversarial=r.adversarial,
                                  epochs=r.tune_epochs, steps=done.steps, lr=r.tune_lr, seed=r.tune_seed)
    save_classifier(tuned.cpu(), path.with_suffix(""))
    records.write_json(path.with_name(path.stem + KEY_SUFFIX), key)
    return path
