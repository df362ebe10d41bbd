"""`make bench-quality` (`python -m benchmarks.quality`): do HiGFA's images make a few-shot classifier better,
and where is the bottleneck?

On the built-in tiny world (higfa/world/birds.py, models in higfa/world/assets/), for every preset of
docs/method.md (cfg, contour, classifier-all-steps, higfa) and any extra arm (`--extra`):

1. generate `per_source` (default 2, as SaSPA) images per real few-shot image (10 per species): family prompt, the
   transformed contour of that real image, a guide aimed at its species (the shipped few-shot
   guide unless the arm names another); the same noise and contour seeds for every arm (paired);
2. fidelity, scored by the independent scorer (higfa/world/scorer.py: another architecture, other
   data and seeds, trained with blur/noise) — never by a classifier that guided the images — as
   `oracle_species` / `oracle_family`; the arm's guide's own verdict (`guide_species`, the fooling
   gap is the difference); the world's oracle as a second opinion where it did not guide;
3. diversity (pixels and scorer features) and contour adherence (edge F1 of the sample's Canny
   edges against its transformed contour, 1 and 2 px tolerance);
4. diagnosis: the scorer on real test images, blurred to the samples' sharpness and after a VAE
   round trip (the VAE ceiling: no sample can show a marking the VAE loses);
5. downstream (benchmarks/quality/downstream.py), each real image replaced by one of its variants with
   probability α (SaSPA), seeds paired across arms:
   - `--protocol converged` (default; issue 24, benchmarks/quality/protocol.py): per architecture (`test_resnet`
     from scratch, `resnet18-pre` pretrained on the world's species outside its test classes) and shots (10, 5,
     2) every arm trains the same steps, chosen so that the real-only arm has plateaued; arms real, real_x4 (four
     times the real images per species), real+<arm>; per block the real arm's held-out curve and the headroom
     (real_x4 − real, the oracle-guided arms' gains, each arm's gain as a fraction of real_x4 − real);
   - `--protocol saspa` (the bench's until issue 24; its cache keys unchanged): one architecture trained the same
     epochs per arm, 10-shot and 5-shot; arms real, real20, real+<arm>;
   paired 95 % CIs against real.

--world picks the world (tinybirds, the default, or finebirds once its models are trained: higfa/world/catalog.py).
Writes benchmarks/results/quality.json (per world: `worlds.<name>`; a run replaces its own world's section and
keeps the others) and docs/quality.md (every world's tables; hand-written notes below the marker are kept).
Generated images are cached in outputs/bench_quality/<arm>.npz (--regenerate; another world: its own folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from higfa.classifier import ClassifierEnsemble, load_classifier
from higfa.contour import ContourTransform
from higfa.schedule import Schedule
from higfa.training import features
from higfa.world.catalog import DEFAULT, WORLDS, assets
from higfa.world.models import Generation, load_world
from higfa.world.scorer import SCORER, load_scorer

from ..judge_probe import generate as judge_generate
from ..judge_probe import verdicts
from ..seeds import CONTOUR, NOISE, bench_seed
from . import device as on
from .arms import BENCH_DECODER, PRESETS, Arm, Plan, build_arms, cache_folder, cache_ok, plan_arms, shown
from .downstream import run_converged, run_downstream
from .guides import boot_guide, load_guide, tune_key, tuned_guide
from .protocol import ARCHITECTURES
from .report import finite, merge_world, report, write_doc
from .score import diagnosis, filter_keep, score_arm, scorer_info

ROOT = Path(__file__).resolve().parents[2]
DOWNSTREAM = ("cfg", "higfa", "higfa-robust")


def generate(models, arm: Arm, guide, sources, which, per_source: int, steps: int, batch: int, seed: int, bar) -> dict:
    """Images [N,H,W,3] uint8, targets [N], source index [N] (into `sources`; `which` lists those used),
    contours [N,H,W] uint8, seconds, guidance counts."""
    items = [(int(i), k) for i in which for k in range(per_source)]
    schedule = Schedule.from_preset(arm.preset, **arm.overrides)
    models = dataclasses.replace(models, guidance=guide)
    judge = None if arm.judge is None else load_classifier(arm.judge, models.device).float().eval()
    out = {"images": [], "contours": [], "targets": [], "source": []}
    guided = gated = 0
    t0 = time.perf_counter()
    for b in range(0, len(items), batch):
        chunk = items[b:b + batch]
        idx = [i for i, _ in chunk]
        tg = [int(sources.labels[i]) for i in idx]
        contours = contours_of(models, sources.images[idx], [bench_seed(seed, CONTOUR, i, k) for i, k in chunk])
        noise = [bench_seed(seed, NOISE, i, k) for i, k in chunk]
        # The world VAE guides every arm, whatever the world's default guidance decoder: the bench measures the
        # method; what the tiny decoder costs in fidelity is benchmarks/speed/world_decoder.py's question.
        if judge is None:
            gen = models.generate(schedule, tg, contours, noise, steps,
                                  callback=lambda *_: bar.update(len(chunk)),  # noqa: B023 (called in this iteration)
                                  guidance_decoder=BENCH_DECODER)
        else:  # the judge's p drives ramp, gate and filter; the gradient stays the guide's (judge_probe's sampler)
            gen = Generation(*judge_generate(models, schedule, guide, judge, arm.judge, tg, contours, noise, steps))
            bar.update(len(chunk) * steps)
        out["images"].append(gen.images)
        out["contours"].append((contours.amax(1) * 255).round().to(torch.uint8).numpy())
        out["targets"].append(tg)
        out["source"].append(idx)
        summary = gen.result.trace.summary()
        guided += summary["guided_sample_steps"]
        gated += summary["gated_sample_steps"]
    arrays = {k: np.concatenate(v) for k, v in out.items()}
    return arrays | {"seconds": time.perf_counter() - t0, "guided_sample_steps": guided, "gated_sample_steps": gated}


# Transformed contours [3,H,W] by (edge detector, contour seed, source image): every arm of a run draws the same
# contour for the same item, so it is computed once (on the CPU, per image; a GPU run was waiting on it otherwise).
_CONTOURS: dict = {}
_CONTOURS_MAX = 20_000  # about 1 GB of 64 px contours at most


def contours_of(models, images, seeds) -> torch.Tensor:
    """`models.contours(images, seeds, ContourTransform())` ([B,3,H,W] float in [0,1], on the CPU), each image's
    contour computed once per process (it depends on the edge detector, the seed and the image alone)."""
    keys = [(repr(models.edge_detector), int(s), hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest())
            for im, s in zip(images, seeds)]
    todo = [j for j, k in enumerate(keys) if k not in _CONTOURS]
    if todo:
        if len(_CONTOURS) + len(todo) > _CONTOURS_MAX:
            _CONTOURS.clear()
        made = models.contours(np.asarray(images)[todo], [seeds[j] for j in todo], ContourTransform())
        _CONTOURS.update({keys[j]: c for j, c in zip(todo, made)})
    return torch.stack([_CONTOURS[k] for k in keys])


def produce(args, models, real, plan: Plan, guides: dict) -> dict:
    """arm name -> its images [N,H,W,3] uint8, targets, source (index into `real`), contours and generation meta,
    plus `keep` [N] bool where the arm has a confidence filter: from its cache file when that holds images of its
    settings, else generated and cached. Second-round and tuned guides are trained on the way (added to
    `guides`, guide spec or guide key -> classifier), once the arms they learn from have their images."""
    from tqdm import tqdm

    stale = {a.name: plan.twin[a.name] is None
             and (args.regenerate or not cache_ok(plan.caches[a.name], plan.settings[a.name])) for a in plan.arms}
    bar = tqdm(total=sum(len(plan.sources[n]) for n in stale if stale[n]) * args.per_source * args.steps,
               desc="generate", unit="sample-step", file=sys.stdout, dynamic_ncols=True,
               disable=not any(stale.values()))
    generated = {}
    for a in plan.arms:
        if a.guide not in guides:  # boot:ARM, once ARM's images exist
            guides[a.guide] = boot_guide(models, real, generated[a.boot_of], args.alpha, plan.guide_files[a.guide],
                                         plan.settings[a.name]["guide"])
        if a.base_key not in guides:  # tune=EPS: the guide tuned on its own few-shot images' x̂0
            stem = Path(plan.guide_files[a.guide]).name.removesuffix(".safetensors")
            # the world's diffusion model ('builtin': tinybirds'; its key's device says where it is tuned)
            model = str(args.models or ("builtin" if args.world == DEFAULT else args.world))
            guides[a.base_key] = tuned_guide(model, plan.guide_files[a.guide], a.tune,
                                             args.out / f"{stem}-tune{a.tune:g}.safetensors",
                                             tune_key(plan.settings[a.name]))
        if a.guide_key not in guides:  # ensemble=...: the guide and the other members push as one
            guides[a.guide_key] = ClassifierEnsemble([guides[a.base_key],
                                                      *(load_guide(models, m) for m in a.ensemble)])
        cache, settings = plan.caches[a.name], plan.settings[a.name]
        if stale[a.name] and not args.regenerate and cache_ok(cache, settings):
            stale[a.name] = False  # another process (e.g. a --no-downstream prefill) cached it since the start
            bar.update(len(plan.sources[a.name]) * args.per_source * args.steps)
        if stale[a.name]:
            bar.set_postfix_str(a.name)
            g = generate(models, a, guides[a.guide_key], real, plan.sources[a.name], args.per_source, args.steps,
                         args.batch, args.seed, bar)
            meta = {k: v for k, v in g.items() if not isinstance(v, np.ndarray)} | {"settings": settings}
            np.savez_compressed(cache, **{k: v for k, v in g.items() if isinstance(v, np.ndarray)},
                                meta=json.dumps(meta))
        if plan.twin[a.name] is not None:
            generated[a.name] = {k: v for k, v in generated[plan.twin[a.name]].items() if k != "keep"}
        else:
            data = np.load(cache)
            generated[a.name] = ({k: data[k] for k in ("images", "targets", "source", "contours")}
                                 | json.loads(str(data["meta"])))
        if a.filter is not None:  # the confidence filter, by a classifier that did not guide these images
            generated[a.name]["keep"] = filter_keep(a, generated[a.name], models.device)
    bar.close()
    return generated


def evaluate(args, models, plan: Plan, generated: dict, guides: dict, scorer_path: Path, real, test) -> dict:
    """The results file's content but the run time: every arm scored, the diagnosis, the downstream runs (unless
    --no-downstream), the settings."""
    fam = models.world.family_labels()
    scorer = load_scorer(scorer_path, models.device)
    real_feats = features(scorer, real.images)
    test_oracle_feats = features(models.oracle, test.images)
    results: dict = {"presets": {}, "scorer": scorer_info(scorer, scorer_path)}
    for a in plan.arms:
        results["presets"][a.name] = score_arm(generated[a.name], a, scorer, guides[a.guide_key], models.oracle, fam,
                                               real, real_feats, test_oracle_feats) | {"preset": a.preset,
                                                                                       "overrides": a.overrides}
        results["presets"][a.name] |= arm_record(models, a, generated[a.name], guides[a.guide_key])
    # diagnosis: the scorer on real test images made as soft as the samples, and after the VAE
    sample_set = generated["higfa"]["images"] if "higfa" in generated else generated[plan.arms[0].name]["images"]
    diag = diagnosis(scorer, models, real, test, real_feats, test_oracle_feats, sample_set, fam)
    results["real"] = diag["real"]
    results["scorer"] |= diag["scorer"]
    results["ceiling"] = diag["ceiling"]
    if "higfa" in results["presets"]:
        results["world"] = {"contour_f1": results["presets"]["higfa"]["contour_f1"]["2px"],
                            "contour_f1_1px": results["presets"]["higfa"]["contour_f1"]["1px"],
                            "contour_f1_of": "higfa (defaults), Canny 120/200 of the sample vs its transformed contour",
                            "kid_oracle": results["presets"]["higfa"]["kid_oracle"],
                            "kid_oracle_of": "higfa (defaults) vs real test images, world oracle pre-logit features"}
    if args.downstream and not args.no_downstream:
        results["downstream"] = downstream(args, models, generated, plan, test)
    results["settings"] = {"shots": args.shots, "per_source": args.per_source, "steps": args.steps,
                           "batch": args.batch, "seed": args.seed,
                           "schedule_overrides": Schedule.parse_overrides(args.set),
                           "arms": {a.name: a.record() for a in plan.arms},
                           "sweep": [a.name for a in plan.arms if "=" in a.name],
                           "test_images": len(test), "downstream_arch": args.downstream_arch, "epochs": args.epochs,
                           "alpha": args.alpha, "seeds": args.seeds, "downstream_shots": args.downstream_shots,
                           "world": args.world, "protocols": args.protocol, "archs": args.archs,
                           "downstream_steps": args.downstream_steps,
                           "threads": torch.get_num_threads(),
                           "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}"}
    if args.device.type != "cpu":  # CPU results keep today's keys; a GPU run says which GPU
        results["settings"]["device"] = on.describe(args.device)
    return results


def arm_record(models, arm: Arm, g: dict, guide) -> dict:
    """Issue 25's per-arm record: the resolved schedule, the judge (its file or None), the judge's species accuracy
    on the final images (None without a judge), the stage-2 sample-steps guided and gated."""
    out = {"schedule": Schedule.from_preset(arm.preset, **arm.overrides).to_dict(), "judge": shown(arm.judge),
           "judge_species": None, "guided_sample_steps": g["guided_sample_steps"],
           "gated_sample_steps": g["gated_sample_steps"]}
    if arm.judge is not None:
        judge = load_classifier(arm.judge, models.device).float().eval()
        out["judge_species"] = verdicts(models, g["images"], np.asarray(g["targets"]), guide, judge)["judge_species"]
    return out


def downstream(args, models, generated: dict, plan: Plan, test) -> dict:
    """protocol -> its results (`run_converged`, `run_downstream`), for each --protocol."""
    from tqdm import tqdm

    out = {}
    bar = tqdm(desc="downstream", unit="run", file=sys.stdout, dynamic_ncols=True)
    if "converged" in args.protocol:
        out["converged"] = run_converged(args, models.world, args.world, generated, plan.settings, test, bar)
    if "saspa" in args.protocol:
        saspa_args = argparse.Namespace(**vars(args))
        saspa_args.downstream_shots = args.downstream_shots or [10, 5]
        out |= run_downstream(saspa_args, models.world, generated, plan.settings, test, bar)
    bar.close()
    return out


def main(argv=None) -> int:
    """The bench (see the module docstring); 0 when it wrote its results (or, with --only-downstream, filled the
    downstream cache)."""
    args = parse_args(argv)
    args.device = on.resolve(args.device)
    on.setup(args.device, args.threads)
    started = time.perf_counter()
    models = load_world(args.models or assets(args.world), args.device)
    scorer_path = args.scorer or models.path / SCORER
    if not scorer_path.is_file():  # fail before generating
        load_scorer(scorer_path)
    real = models.world.split("fewshot", args.shots)
    test = models.world.split("test", args.test_per_class)
    args.out.mkdir(parents=True, exist_ok=True)

    arms = build_arms(args, models.path)
    args.arm_list = arms  # the converged protocol counts the oracle-guided arms as the headroom's upper bound
    guides = {a.guide: load_guide(models, a.guide) for a in arms if a.boot_of is None}
    plan = plan_arms(args, arms, real, models.world.num_classes, models.path)
    for settings in plan.settings.values():  # a GPU's images are its own (in place: boot keys hold these dicts)
        settings.update(on.key_part(args.device))
    generated = produce(args, models, real, plan, guides)
    if args.downstream_from_cache:
        results = merge_world(json.loads(args.results.read_text()), args.world, None)
        mine = results["worlds"][args.world]
        mine["downstream"] = downstream(args, models, generated, plan, test)
        mine["settings"] |= {"seeds": args.seeds, "epochs": args.epochs, "alpha": args.alpha,
                             "downstream_shots": args.downstream_shots, "downstream_arch": args.downstream_arch,
                             "protocols": args.protocol, "archs": args.archs, "downstream_steps": args.downstream_steps}
        if args.device.type != "cpu":
            mine["settings"]["downstream_device"] = on.describe(args.device)
        args.results.write_text(json.dumps(finite(results), indent=1) + "\n")
        write_doc(args.doc, report(results))
        return 0
    if args.only_downstream:
        # fills the run cache only: --results keeps the whole report (--downstream-from-cache rewrites its section)
        print(json.dumps(downstream(args, models, generated, plan, test), indent=1))
        return 0

    mine = evaluate(args, models, plan, generated, guides, scorer_path, real, test)
    mine["seconds_total"] = round(time.perf_counter() - started, 1)
    old = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results = merge_world(old, args.world, mine)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(finite(results), indent=1) + "\n")
    text = report(results)
    print(text)
    write_doc(args.doc, text)
    print(f"wrote {args.results}")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (--help: the module docstring and every option)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="*", default=list(PRESETS))
    p.add_argument("--extra", nargs="*", default=[],
                   metavar="NAME=PRESET[,FIELD=VALUE...][,guide=G][,tune=EPS][,judge=PATH][,ensemble=PATH+PATH]",
                   help="more arms: a preset with schedule overrides and/or another guide (guide=oracle: diagnosis "
                   "only; guide=PATH: a classifier file; guide=boot:ARM: a second-round guide trained on ARM's "
                   "images); tune=EPS: that guide tuned first by `higfa tune-classifier --adversarial EPS`; "
                   "judge=PATH: a classifier that did not guide drives the ramp and the gate (issue 25); "
                   "filter=PATH: a confidence filter downstream; ensemble=PATH+PATH: more classifiers that guide "
                   "as one with the guide (the mean of their log-softmax); any PATH may be probe:NAME, a classifier "
                   "the judge probe trains on the world's few-shot images (benchmarks.judge_probe.TRAINED); "
                   "e.g. higfa-oracle=higfa,guide=oracle")
    p.add_argument("--shots", type=int, default=10, help="real images per species used as sources")
    p.add_argument("--fidelity-shots", type=int, default=None,
                   help="sources per species for arms not used downstream (default: --shots; fewer saves time)")
    p.add_argument("--per-source", type=int, default=2,
                   help="synthetic images per real image (default 2: SaSPA's two outputs per real image)")
    p.add_argument("--steps", type=int, default=30, help="sampling steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="generation seed")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="schedule overrides for every arm")
    p.add_argument("--sweep", nargs="*", default=[], metavar="FIELD=V1,V2",
                   help="also run `higfa` with one schedule field at each value (fidelity only)")
    p.add_argument("--scorer", type=Path, default=None, help="independent scorer (default: the shipped one)")
    p.add_argument("--downstream", nargs="*", default=list(DOWNSTREAM),
                   help="arms used downstream (they get all --shots sources; none: skip)")
    p.add_argument("--only-downstream", action="store_true", help="generate (or load) and run the downstream "
                   "training only, e.g. one seed per process to fill the cache in parallel; writes no report")
    p.add_argument("--downstream-from-cache", action="store_true", help="fill only the downstream section of an "
                   "existing --results file from the runs cached so far (no training, no rescoring), and rewrite --doc")
    p.add_argument("--no-downstream", action="store_true", help="skip the downstream runs (--downstream still "
                   "decides which arms get all sources)")
    p.add_argument("--downstream-shots", type=int, nargs="+", default=None,
                   help="shots of the downstream runs (default: 10 5 2 converged, 10 5 saspa)")
    p.add_argument("--downstream-arch", default="test_resnet", help="the saspa protocol's network (timm name)")
    p.add_argument("--world", default=DEFAULT, choices=WORLDS, help="the world (its shipped models folder unless "
                   "--models names another)")
    p.add_argument("--protocol", nargs="+", default=["converged"], choices=["converged", "saspa"],
                   help="downstream protocols: converged (issue 24: same steps per block, plateaued real arm, two "
                   "architectures, headroom) and/or saspa (the old one: epochs over each arm's real set)")
    p.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES),
                   help="the converged protocol's networks")
    p.add_argument("--downstream-steps", type=int, default=None,
                   help="the converged protocol's steps for every block (default: downstream.CONVERGED_STEPS)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="downstream seeds (paired)")
    p.add_argument("--epochs", type=int, default=250,
                   help="downstream epochs over the real set's size (at 500 every 10-shot arm still gains a few "
                   "points: docs/quality.md, 'Is 250 epochs converged?')")
    p.add_argument("--batch-size", type=int, default=64, help="downstream batch size")
    p.add_argument("--alpha", type=float, default=0.4, help="SaSPA replacement probability")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--jobs", type=int, default=1, help="downstream runs in parallel worker processes (on CUDA "
                   "they share the one GPU)")
    p.add_argument("--device", default="cpu", help="cpu (the default: results and cache keys as on any machine), "
                   "cuda[:N], or auto (CUDA when torch sees one): generation, scoring and every downstream run; a "
                   "GPU's images and runs are cached under keys of their own (docs/quality.md 'Running it on a GPU')")
    p.add_argument("--models", type=Path, default=None, help="world models folder (default: the shipped ones)")
    p.add_argument("--out", type=Path, default=None,
                   help="image and run cache folder (default outputs/bench_quality, another world's: _<world>)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    p.add_argument("--doc", type=lambda s: Path(s) if s else None, default=ROOT / "docs" / "quality.md",
                   help="markdown report ('' = none)")
    p.add_argument("--regenerate", action="store_true", help="ignore cached generated images")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = cache_folder(args.world)
    return args
