"""`higfa augment`: HiGFA over a whole dataset with diffusers — resumable, sharded, byte-reproducible.

The job is a deterministic list of items (image × variant, images sorted by id). Item (i, v) gets
seed = H(global seed, image id, v): its noise, contour transform and ancestral noise come from that
seed alone, so any output can be regenerated on its own and the bytes do not depend on how many
processes share the work (torchrun, SLURM arrays, --shard). With --batch-size B the list is cut into
fixed groups of B consecutive items, sampled together; the groups do not depend on the world size
either (the bytes do depend on B, which is part of the run).

Outputs: OUT/images/<label>/<name>_v<k>.png (an ImageFolder), optional OUT/traces/...,
OUT/manifest.jsonl, run.json (the run's settings and model-file digests), summary.json.
A rerun with the same settings resumes; one process per shard may write (a lock names the holder).
Ctrl-C exits 130 and SIGTERM (e.g. SLURM preemption) 143, keeping every finished image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import records
from .prompts import DEFAULT_PROMPT
from ..schedule import PRESET_DESCRIPTIONS
from .settings import EDGE_METHODS, FILTERS, PRESETS, AugmentSettings


def settings_from_args(args: argparse.Namespace) -> AugmentSettings:
    """The typed settings of the parsed options (checked: a bad value is a one-line error)."""
    try:
        options = json.loads(args.scheduler_options) if args.scheduler_options else None
    except json.JSONDecodeError as e:
        raise ValueError(f"--scheduler-options {args.scheduler_options!r}: not valid JSON ({e}); give an object, "
                         'e.g. \'{"set_alpha_to_one": true}\'') from None
    return AugmentSettings(
        data=Path(args.data), out=Path(args.out), model=args.model, variants=args.variants,
        class_names=args.class_names, prompt=args.prompt, super_name=args.super, negative_prompt=args.negative_prompt,
        limit=args.limit, traces=args.traces, config=args.config, controlnet=args.controlnet,
        controlnet_config=args.controlnet_config, classifier=args.classifier, guidance_vae=args.guidance_vae,
        preset=args.preset,
        schedule=args.schedule, scheduler=args.scheduler, scheduler_options=options, steps=args.steps, eta=args.eta,
        size=args.size, seed=args.seed, batch_size=args.batch_size, edges=args.edges, canny_low=args.canny_low,
        canny_high=args.canny_high, auto_canny=args.auto_canny, edge_blur=args.edge_blur,
        contour_amount=args.contour_amount, min_confidence=args.min_confidence, filter=args.filter,
        filter_classifier=args.filter_classifier, judge=args.judge, ensemble=tuple(args.ensemble or ()),
        overwrite=args.overwrite, device=args.device, dtype=args.dtype, vae_dtype=args.vae_dtype, shard=args.shard,
        threads=args.threads, deterministic=args.deterministic, progress=not args.no_progress, quiet=args.quiet,
    ).validate()


# `--rounds 2`'s options: (option, RecipeSettings field, type); None (left out) = the recipe's default
ROUND2_OPTIONS = (("--round2-preset", "preset", str), ("--round2-filter", "filter", float), ("--alpha", "alpha", float),
                  ("--guide-steps", "guide_steps", int), ("--guide-seed", "guide_seed", int),
                  ("--tune-epochs", "tune_epochs", int), ("--tune-views", "tune_views", int),
                  ("--adversarial", "adversarial", float))


def recipe_from_args(args: argparse.Namespace):
    """`higfa.jobs.recipe.RecipeSettings` of the --rounds 2 options (checked), or None for one round; a
    round-2 option without --rounds 2 is an error naming it."""
    from .recipe import RecipeSettings

    given = {field: getattr(args, field_attr(option)) for option, field, _ in ROUND2_OPTIONS
             if getattr(args, field_attr(option)) is not None}
    if args.rounds == 1:
        if given:
            option = next(o for o, f, _ in ROUND2_OPTIONS if f in given)
            raise ValueError(f"{option} is an option of the second round: add --rounds 2")
        return None
    return RecipeSettings(**given).validate()


def field_attr(option: str) -> str:
    return option[2:].replace("-", "_")


def run(args: argparse.Namespace) -> int:
    from .job import run_augment

    settings = settings_from_args(args)
    recipe = recipe_from_args(args)
    if recipe is None:
        return run_augment(settings)
    if settings.ensemble:
        raise ValueError("--ensemble with --rounds 2: the recipe trains its own second-round guide; run round 2 "
                         "with `higfa augment --classifier ROUND2_GUIDE --ensemble ...` instead")
    from .recipe import run_recipe

    return run_recipe(settings, recipe)


def run_merge(args: argparse.Namespace) -> int:
    summary = records.merge(args.out)
    print(json.dumps(summary, indent=1))
    return 0 if summary["missing"] == 0 else 1


def register(subparsers) -> None:
    """Add `higfa augment` and its options to `subparsers`. A flat list of add_argument calls in --help's order
    (over 80 lines): splitting it would only scatter the options across functions."""
    p = subparsers.add_parser("augment", help="augment a whole dataset with HiGFA (resumable, torchrun/SLURM sharding)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("data")
    io.add_argument("--data", required=True, help="ImageFolder (one sub-folder per class) or CSV/JSON(L) manifest "
                    "with path,label (every label must be usable as a folder name)")
    io.add_argument("--out", required=True, help="output folder (created; resumable); not inside --data")
    io.add_argument("--variants", type=int, default=2, help="synthetic images per real image (default 2, SaSPA)")
    io.add_argument("--class-names", help="JSON {label: name}, or text 'label<TAB>name' lines, for the prompts "
                    "(default: folder names, '001.Black_footed_Albatross' -> 'Black footed Albatross')")
    io.add_argument("--prompt", help=f"prompt template (default {DEFAULT_PROMPT!r}; the built-in world: its own "
                    "'a photo of a {family}')")
    io.add_argument("--super", default="object", help="super-category for {super}, e.g. bird, aircraft, car")
    io.add_argument("--negative-prompt", default="", help="negative prompt (default empty)")
    io.add_argument("--limit", type=int, help="only the first N images (sorted by id): a quick try")
    io.add_argument("--traces", action="store_true", help="also write each image's per-step trace (JSON)")
    m = p.add_argument_group("models (local paths only)")
    m.add_argument("--model", required=True, help="diffusers folder, single-file SD checkpoint (+ --config), or "
                   "'builtin'")
    m.add_argument("--config", help="local diffusers config folder for a single-file checkpoint")
    m.add_argument("--controlnet", help="ControlNet folder or single file (default: MODEL/controlnet)")
    m.add_argument("--controlnet-config", help="config folder for a single-file ControlNet (default: from the UNet)")
    m.add_argument("--classifier", help="fine-grained classifier .safetensors (+ .json sidecar)")
    m.add_argument("--ensemble", action="append", metavar="PATH.safetensors", help="another classifier (same "
                   "classes, any architecture) that guides together with --classifier: the guide is the mean of their "
                   "log-probabilities, so only the push they agree on is applied (docs/method.md, Ensemble guide); "
                   "repeat for more")
    m.add_argument("--guidance-vae", help="decoder for the classifier path only: a diffusers AutoencoderTiny (TAESD) "
                                          "or AutoencoderKL folder, or taesd_decoder.safetensors; much faster at SD "
                                          "size (docs/speed.md). 'none': the model's VAE (default; the built-in "
                                          "world uses its shipped tiny decoder)")
    g = p.add_argument_group("sampling")
    g.add_argument("--preset", default="higfa", choices=list(PRESETS), help="schedule preset (default higfa): "
                   + "; ".join(f"{k}: {v}" for k, v in PRESET_DESCRIPTIONS.items()))
    g.add_argument("--schedule", help="schedule JSON file or inline JSON (overrides --preset)")
    g.add_argument("--scheduler", default="ddim", help="ddim (default), euler, euler_a, dpmpp_2m, unipc, pndm, heun, "
                   "lms, ddpm, or a diffusers scheduler class name")
    g.add_argument("--scheduler-options", help="JSON overrides of the scheduler config, e.g. "
                   '\'{"set_alpha_to_one": true}\'')
    g.add_argument("--steps", type=int, default=30, help="sampling steps (>= 1)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic DDIM)")
    g.add_argument("--size", type=int, help="image size in pixels (default: the model's, 512 for SD 1.5)")
    g.add_argument("--seed", type=int, default=0, help="global seed; item seeds derive from (seed, image id, variant)")
    g.add_argument("--batch-size", type=int, default=1, help="items sampled together (fixed groups; default 1)")
    c = p.add_argument_group("contour")
    c.add_argument("--edges", default="canny", choices=list(EDGE_METHODS))
    c.add_argument("--canny-low", type=float, default=120.0)
    c.add_argument("--canny-high", type=float, default=200.0)
    c.add_argument("--auto-canny", action="store_true", help="thresholds from the image median")
    c.add_argument("--edge-blur", type=float, default=0.0)
    c.add_argument("--contour-amount", type=float, default=0.5, help="transform strength in [0,1] (0 = none)")
    f = p.add_argument_group("filter")
    f.add_argument("--min-confidence", type=float, help="final classifier confidence threshold in [0,1]")
    f.add_argument("--filter", default="drop", choices=list(FILTERS), help="below the threshold: drop the image, "
                   "keep it marked in the manifest (mark), or set it aside in OUT/dropped/<label>/ (aside: kept for "
                   "inspection, marked dropped, not in the ImageFolder that goes downstream)")
    f.add_argument("--filter-classifier", metavar="PATH.safetensors", help="score the final images with this "
                   "classifier (timm + .json sidecar) instead of the guide, for the manifest's confidence and "
                   "--min-confidence: guidance raises the guide's own confidence whether or not the detail is there, "
                   "so a classifier that did not guide is the fairer judge (e.g. one of another architecture "
                   "trained on the same real images)"),
    j = p.add_argument_group("judge and second round (docs/classifiers.md: the recipe in one command)")
    j.add_argument("--judge", metavar="PATH.safetensors", help="a classifier that did not guide (timm + .json "
                   "sidecar, e.g. your first guide for a second-round guide): its p(target) on the decoded x̂0 drives "
                   "the confidence ramp, the gate and measure_every (the gradient stays the guide's; one no-grad "
                   "forward per measured step) and, without --filter-classifier, scores the final images. Use a "
                   "preset whose confidence modulates and gates, e.g. --preset higfa-judged")
    j.add_argument("--rounds", type=int, default=1, choices=(1, 2), help="2: the second-round recipe: round 1 in "
                   "OUT/round1, a guide trained on the real images + round 1 (SaSPA weights) and PGD-tuned in "
                   "OUT/guides/, round 2 in OUT/round2 guided by it and judged by --classifier; each stage cached "
                   "and resumable (default 1)")
    j.add_argument("--round2-preset", help="round 2's schedule preset (default higfa-judged)")
    j.add_argument("--round2-filter", type=float, metavar="T", help="set round 2's images aside (OUT/round2/dropped/) "
                   "when the first guide's p(target) < T (default: no filter)")
    j.add_argument("--alpha", type=float, help="SaSPA replacement probability for the second-round guide (default 0.4)")
    j.add_argument("--guide-steps", type=int, help="training steps of the second-round guide (default 1000)")
    j.add_argument("--guide-seed", type=int, help="its seed (default 20)")
    j.add_argument("--tune-epochs", type=int, help="epochs of its tuning on x̂0 (default 4)")
    j.add_argument("--tune-views", type=int, help="noised x̂0 views per real image for the tuning (default 8)")
    j.add_argument("--adversarial", type=float, help="PGD ε of the tuning, image in [0,1] (default 0.031; 0: off)")
    r = p.add_argument_group("run")
    r.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier `higfa augment` run "
                   "in --out (other settings or changed model files): every item is regenerated and, once merged, "
                   "--out holds exactly this run's outputs (files the earlier run wrote and this one does not are "
                   "removed). A folder holding files not written by `higfa augment` is always refused")
    r.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:1")
    r.add_argument("--dtype", default="float32", help="UNet/ControlNet/text-encoder dtype: float32, float16, bfloat16")
    r.add_argument("--vae-dtype", default="float32", help="VAE dtype (float32 default: SD's VAE overflows in fp16)")
    r.add_argument("--shard", help="i/n: this process does shard i of n (without torchrun/SLURM)")
    r.add_argument("--threads", type=int, help="torch CPU threads")
    r.add_argument("--deterministic", action="store_true", help="deterministic GPU kernels (slower)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--quiet", action="store_true", help="no progress bars and no summary")
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an error (default: one line)")
    p.set_defaults(func=run)

    mp = subparsers.add_parser("merge", help="merge the per-rank records of a sharded `higfa augment` run")
    mp.add_argument("out", help="the --out folder of the run")
    mp.set_defaults(func=run_merge)
