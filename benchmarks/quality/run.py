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
5. downstream, SaSPA's protocol (higfa/jobs/evaluate.py): a fresh few-shot classifier trained the
   same epochs per arm, each real image replaced by one of its variants with probability α,
   seeds paired across arms, 10-shot and 5-shot; arms real, real20 (20 real images per species:
   "more real data"), real+<arm>; paired 95 % CIs against real.

Writes benchmarks/results/quality.json and docs/quality.md (tables; hand-written notes below the
marker are kept). Generated images are cached in outputs/bench_quality/<arm>.npz (--regenerate).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from higfa.contour import ContourTransform
from higfa.schedule import Schedule
from higfa.training import features
from higfa.world.models import load_world
from higfa.world.scorer import SCORER, load_scorer

from ..seeds import CONTOUR, NOISE, bench_seed
from .arms import BENCH_DECODER, PRESETS, Arm, Plan, build_arms, cache_ok, plan_arms
from .downstream import run_downstream
from .guides import boot_guide, load_guide, tune_key, tuned_guide
from .report import finite, report, write_doc
from .score import diagnosis, filter_keep, score_arm, scorer_info

ROOT = Path(__file__).resolve().parents[2]
DOWNSTREAM = ("cfg", "higfa", "higfa-robust")


def generate(models, arm: Arm, guide, sources, which, per_source: int, steps: int, batch: int, seed: int, bar) -> dict:
    """Images [N,H,W,3] uint8, targets [N], source index [N] (into `sources`; `which` lists those used),
    contours [N,H,W] uint8, seconds, guidance counts."""
    items = [(int(i), k) for i in which for k in range(per_source)]
    schedule = Schedule.from_preset(arm.preset, **arm.overrides)
    models = dataclasses.replace(models, guidance=guide)
    out = {"images": [], "contours": [], "targets": [], "source": []}
    guided = gated = 0
    t0 = time.perf_counter()
    for b in range(0, len(items), batch):
        chunk = items[b:b + batch]
        idx = [i for i, _ in chunk]
        tg = [int(sources.labels[i]) for i in idx]
        contours = models.contours(sources.images[idx], [bench_seed(seed, CONTOUR, i, k) for i, k in chunk],
                                   ContourTransform())
        # The world VAE guides every arm, whatever the world's default guidance decoder: the bench measures the
        # method; what the tiny decoder costs in fidelity is benchmarks/speed/world_decoder.py's question.
        gen = models.generate(schedule, tg, contours, [bench_seed(seed, NOISE, i, k) for i, k in chunk], steps,
                              callback=lambda *_: bar.update(len(chunk)),  # noqa: B023 (called in this iteration)
                              guidance_decoder=BENCH_DECODER)
        out["images"].append(gen.images)
        out["contours"].append((contours.amax(1) * 255).round().to(torch.uint8).numpy())
        out["targets"].append(tg)
        out["source"].append(idx)
        summary = gen.result.trace.summary()
        guided += summary["guided_sample_steps"]
        gated += summary["gated_sample_steps"]
    arrays = {k: np.concatenate(v) for k, v in out.items()}
    return arrays | {"seconds": time.perf_counter() - t0, "guided_sample_steps": guided, "gated_sample_steps": gated}


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
        if a.guide_key not in guides:  # tune=EPS: the guide tuned on its own few-shot images' x̂0
            stem = Path(plan.guide_files[a.guide]).name.removesuffix(".safetensors")
            guides[a.guide_key] = tuned_guide(str(args.models or "builtin"), plan.guide_files[a.guide], a.tune,
                                              args.out / f"{stem}-tune{a.tune:g}.safetensors",
                                              tune_key(plan.settings[a.name]))
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
            generated[a.name]["keep"] = filter_keep(a, generated[a.name])
    bar.close()
    return generated


def evaluate(args, models, plan: Plan, generated: dict, guides: dict, scorer_path: Path, real, test) -> dict:
    """The results file's content but the run time: every arm scored, the diagnosis, the downstream runs (unless
    --no-downstream), the settings."""
    from tqdm import tqdm

    fam = models.world.family_labels()
    scorer = load_scorer(scorer_path)
    real_feats = features(scorer, real.images)
    test_oracle_feats = features(models.oracle, test.images)
    results: dict = {"presets": {}, "scorer": scorer_info(scorer, scorer_path)}
    for a in plan.arms:
        results["presets"][a.name] = score_arm(generated[a.name], a, scorer, guides[a.guide_key], models.oracle, fam,
                                               real, real_feats, test_oracle_feats) | {"preset": a.preset,
                                                                                       "overrides": a.overrides}
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
        bar = tqdm(total=len(args.seeds) * sum(1 + len(args.downstream) + (s == args.shots)
                                               for s in args.downstream_shots),
                   desc="downstream", unit="run", file=sys.stdout, dynamic_ncols=True)
        results["downstream"] = run_downstream(args, models.world, generated, plan.settings, test, bar)
        bar.close()
    results["settings"] = {"shots": args.shots, "per_source": args.per_source, "steps": args.steps,
                           "batch": args.batch, "seed": args.seed,
                           "schedule_overrides": Schedule.parse_overrides(args.set),
                           "arms": {a.name: dataclasses.asdict(a) for a in plan.arms},
                           "sweep": [a.name for a in plan.arms if "=" in a.name],
                           "test_images": len(test), "downstream_arch": args.downstream_arch, "epochs": args.epochs,
                           "alpha": args.alpha, "seeds": args.seeds, "downstream_shots": args.downstream_shots,
                           "threads": torch.get_num_threads(),
                           "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}"}
    return results


def main(argv=None) -> int:
    """The bench (see the module docstring); 0 when it wrote its results (or, with --only-downstream, filled the
    downstream cache)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    models = load_world() if args.models is None else load_world(args.models)
    scorer_path = args.scorer or models.path / SCORER
    if not scorer_path.is_file():  # fail before generating
        load_scorer(scorer_path)
    real = models.world.split("fewshot", args.shots)
    test = models.world.split("test", args.test_per_class)
    args.out.mkdir(parents=True, exist_ok=True)

    arms = build_arms(args, models.path)
    guides = {a.guide: load_guide(models, a.guide) for a in arms if a.boot_of is None}
    plan = plan_arms(args, arms, real, models.world.num_classes, models.path)
    generated = produce(args, models, real, plan, guides)
    if args.downstream_from_cache:
        from tqdm import tqdm

        results = json.loads(args.results.read_text())
        results["downstream"] = run_downstream(args, models.world, generated, plan.settings, test, tqdm(disable=True))
        results["settings"] |= {"seeds": args.seeds, "epochs": args.epochs, "alpha": args.alpha,
                                "downstream_shots": args.downstream_shots, "downstream_arch": args.downstream_arch}
        args.results.write_text(json.dumps(finite(results), indent=1) + "\n")
        write_doc(args.doc, report(results))
        return 0
    if args.only_downstream:
        # fills the run cache only: --results keeps the whole report (--downstream-from-cache rewrites its section)
        from tqdm import tqdm

        bar = tqdm(desc="downstream", unit="run", file=sys.stdout)
        print(json.dumps(run_downstream(args, models.world, generated, plan.settings, test, bar), indent=1))
        return 0

    results = evaluate(args, models, plan, generated, guides, scorer_path, real, test)
    results["seconds_total"] = round(time.perf_counter() - started, 1)
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
    p.add_argument("--extra", nargs="*", default=[], metavar="NAME=PRESET[,FIELD=VALUE...][,guide=G][,tune=EPS]",
                   help="more arms: a preset with schedule overrides and/or another guide (guide=oracle: diagnosis "
                   "only; guide=PATH: a classifier file; guide=boot:ARM: a second-round guide trained on ARM's "
                   "images); tune=EPS: that guide tuned first by `higfa tune-classifier --adversarial EPS`; "
                   "filter=PATH: a confidence filter downstream; e.g. higfa-oracle=higfa,guide=oracle")
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
    p.add_argument("--downstream-shots", type=int, nargs="+", default=[10, 5])
    p.add_argument("--downstream-arch", default="test_resnet")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="downstream seeds (paired)")
    p.add_argument("--epochs", type=int, default=250,
                   help="downstream epochs over the real set's size (at 500 every 10-shot arm still gains a few "
                   "points: docs/quality.md, 'Is 250 epochs converged?')")
    p.add_argument("--batch-size", type=int, default=64, help="downstream batch size")
    p.add_argument("--alpha", type=float, default=0.4, help="SaSPA replacement probability")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--jobs", type=int, default=1, help="downstream runs in parallel worker processes")
    p.add_argument("--models", type=Path, default=None, help="world models folder (default: the shipped ones)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_quality", help="image cache folder")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    p.add_argument("--doc", type=lambda s: Path(s) if s else None, default=ROOT / "docs" / "quality.md",
                   help="markdown report ('' = none)")
    p.add_argument("--regenerate", action="store_true", help="ignore cached generated images")
    return p.parse_args(argv)
