"""`make bench-quality`: do HiGFA's images make a few-shot classifier better, and where is the bottleneck?

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
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality_arms import (BENCH_DECODER, BOOT, PRESETS, Arm, _cache_ok, _extra, _gen_settings,  # noqa: E402,F401
                           _images_key, _overrides, _sweeps, boot_guide, guide_file, models_digest, tuned_guide)
from quality_report import NOTES_MARKER, report  # noqa: E402

from higfa.classifier import load_classifier  # noqa: E402
from higfa.contour import ContourTransform  # noqa: E402
from higfa.jobs.evaluate import paired, replacement_set  # noqa: E402
from higfa.jobs.evaluate import ImageSet, train_and_test  # noqa: E402
from higfa.schedule import Schedule  # noqa: E402
from higfa.training import Augment, features, predict  # noqa: E402
from higfa.world import metrics  # noqa: E402
from higfa.world.models import load_world  # noqa: E402
from higfa.world.scorer import SCORER, load_scorer  # noqa: E402

DOWNSTREAM = ("cfg", "higfa", "higfa-robust")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint32)[0])


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
        contours = models.contours(sources.images[idx], [_seed(seed, 1, i, k) for i, k in chunk], ContourTransform())
        # The world VAE guides every arm, whatever the world's default guidance decoder: the bench measures the
        # method; what the tiny decoder costs in fidelity is benchmarks/speed_world_decoder.py's question.
        gen = models.generate(schedule, tg, contours, [_seed(seed, 2, i, k) for i, k in chunk], steps,
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


def score_arm(g: dict, arm: Arm, scorer, guide, oracle, fam, real, real_feats, test_oracle_feats) -> dict:
    """The fidelity, diversity and contour adherence of one arm's images. oracle_*: the world's
    oracle where it did not guide, else the independent scorer (`scored_by` says which); scorer_*:
    the independent scorer always."""
    t = g["targets"]
    f = metrics.fidelity(scorer, g["images"], t, fam, "scorer", guide=guide)
    feats = features(scorer, g["images"])
    d = metrics.diversity(g["images"], t, feats, real.images[g["source"]], real_feats[g["source"]])
    out = {"oracle_species": f["species"], "oracle_family": f["family"], "oracle_p_target": f["p_target"],
           "scored_by": "scorer", "scorer_species": f["species"], "scorer_family": f["family"],
           "guided_by": arm.guide_key, "guide_species": f["guide_species"],
           "guide_p_target": f["guide_p_target"], "pixel_diversity": d["within_class_pixel"],
           "feature_diversity": d["within_class_feature"], "to_source_pixel": d["to_source_pixel"],
           "to_source_feature": d["to_source_feature"], "n": int(len(t)), "seconds_per_image": g["seconds"] / len(t),
           "guided_sample_steps": g["guided_sample_steps"], "gated_sample_steps": g["gated_sample_steps"],
           "sharpness": metrics.sharpness(g["images"]),
           "contour_f1": {f"{tol}px": metrics.contour_f1(g["contours"], g["images"], tol)["f1"] for tol in (1, 2)},
           # distance to real test images in the world oracle's features (for the oracle-guided arm too: KID
           # measures the image distribution, not a verdict; lower is closer to real)
           "kid_oracle": metrics.kid(features(oracle, g["images"]), test_oracle_feats)}
    judged = f  # the verdict behind oracle_species: the scorer's, or the world oracle's where it did not guide
    if arm.guide != "oracle":  # the world's oracle may score only what it did not guide
        o = judged = metrics.fidelity(oracle, g["images"], t, fam, "world oracle")
        out |= {"world_oracle_species": o["species"], "world_oracle_family": o["family"],
                "oracle_species": o["species"], "oracle_family": o["family"], "oracle_p_target": o["p_target"],
                "scored_by": "world oracle"}
    out["fooling_gap"] = out["guide_species"] - out["oracle_species"]
    if "keep" in g:  # what the confidence filter keeps, and how right the kept images are (the same judge as above)
        # (the kept images are what `higfa augment --filter-classifier` leaves a user to train on)
        kept = g["keep"]
        pred = np.asarray(judged["pred"])
        right, family_right = pred == t, fam[pred] == fam[t]
        out["filter"] = {"classifier": arm.filter, "threshold": arm.filter_threshold, "kept": float(kept.mean()),
                         "oracle_species_dropped": float(right[~kept].mean()) if (~kept).any() else None}
        if kept.any():
            k = np.flatnonzero(kept)
            dk = metrics.diversity(g["images"][k], t[k], feats[k], real.images[g["source"][k]],
                                   real_feats[g["source"][k]])
            guide_kept = float((np.asarray(f["guide_pred"])[k] == t[k]).mean())
            species_kept = float(right[k].mean())
            out["filter"] |= {"oracle_species_kept": species_kept,
                              "oracle_family_kept": float(family_right[k].mean()), "guide_species_kept": guide_kept,
                              "fooling_gap_kept": guide_kept - species_kept,
                              "pixel_diversity_kept": dk["within_class_pixel"]}
    return out


def downstream(args, world, generated: dict, settings: dict, test, bar) -> dict:
    """protocol -> shots -> arm -> {per_seed, mean, std, steps, images}; plus paired differences.
    Each run's accuracy is cached in <out>/downstream.json under everything that decides it."""
    cache_file = args.out / "downstream.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    real_all = world.split("fewshot", max(args.shots, 2 * args.shots))
    out = {}
    for shots in args.downstream_shots:
        keep = np.concatenate([real_all.of_class(c)[:shots] for c in range(world.num_classes)])
        real = ImageSet(real_all.images[keep], real_all.labels[keep], [])
        # the generation sources are the first `args.shots` real images per species, in class-major order
        src_map = {c * args.shots + i: c * shots + i for c in range(world.num_classes) for i in range(shots)}
        arms = {"real": (real.images, real.labels, None, len(real.labels))}
        keys = {"real": None}
        for name in args.downstream:
            g = generated[name]
            use = np.array([s in src_map for s in g["source"].tolist()]) & g.get("keep", True)
            src = np.array([src_map[s] for s in g["source"][use].tolist()], dtype=np.int64)
            arms[f"real+{name}"] = (*replacement_set(real.images, real.labels, g["images"][use], g["targets"][use],
                                                     src, args.alpha), len(real.labels))
            keys[f"real+{name}"] = settings[name]
        if shots == args.shots:  # "more real data": twice the real images, the same epochs
            more = np.concatenate([real_all.of_class(c)[:2 * shots] for c in range(world.num_classes)])
            arms[f"real{2 * shots}"] = (real_all.images[more], real_all.labels[more], None, len(more))
            keys[f"real{2 * shots}"] = None
        def key_of(arm, s, steps, shots=shots, keys=keys):
            return json.dumps({"shots": shots, "arm": arm, "images": keys[arm], "seed": s, "steps": steps,
                               "alpha": args.alpha, "arch": args.downstream_arch, "batch": args.batch_size,
                               "test": len(test), "models": str(args.models or "shipped")}, sort_keys=True)

        steps_of = {arm: max(1, round(args.epochs * n / args.batch_size)) for arm, (_, _, _, n) in arms.items()}
        todo = [] if args.downstream_from_cache else [
            (key_of(arm, s, steps_of[arm]), x, y, w, steps_of[arm], s)
            for arm, (x, y, w, n) in arms.items() for s in args.seeds if key_of(arm, s, steps_of[arm]) not in cache]
        for key, acc in _run_all(todo, test, world, args):
            cache[key] = acc
            # a killed run keeps what it finished; merged with what a parallel run wrote meanwhile
            on_disk = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
            cache = on_disk | cache
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=0))
            tmp.replace(cache_file)
            bar.update(1)
        res = {}
        for arm, (_, y, w, n) in arms.items():
            steps = steps_of[arm]
            accs, seeds_done = [], []
            for s in args.seeds:
                key = key_of(arm, s, steps)
                if key not in cache:
                    continue  # not finished yet (--downstream-from-cache): left out, and the seed list says so
                accs.append(cache[key])
                seeds_done.append(s)
            if not accs:
                continue
            res[arm] = {"per_seed": accs, "seeds": seeds_done, "mean": float(np.mean(accs)),
                        "std": float(np.std(accs)), "steps": steps,
                        "real_images": n, "synthetic_images": int(len(y) - n) if w is not None else 0}
        res["paired"] = {f"{a} - {b}": _paired(res, a, b) for a, b in
                         [(a, "real") for a in res if a != "real"]
                         + [(a, "real+cfg") for a in res if a.startswith("real+higfa")]
                         if a in res and b in res}
        out[f"{shots}-shot"] = res
    # downstream.saspa.<arm>.per_seed: the --shots setting at the top, the other shot counts beside it
    main = out.pop(f"{args.shots}-shot", {})
    return {"saspa": main | {"shots": args.shots} | out}


def _run_all(todo: list, test, world, args):
    """(key, accuracy) of each downstream run as it finishes: in this process, or in `--jobs` worker processes
    (one torch thread each unless --threads says otherwise); every run is seeded, so the order changes nothing."""
    def run(submit, task):
        key, x, y, w, steps, seed = task
        return submit(train_and_test, x, y, test, world.class_names, architecture=args.downstream_arch,
                      size=world.image_size, steps=steps, seed=1000 + seed, weights=w, batch_size=args.batch_size,
                      augment=Augment(noise=0.03, blur=1.0))

    if args.jobs <= 1 or len(todo) <= 1:
        for task in todo:
            yield task[0], run(lambda f, *a, **k: f(*a, **k), task)["accuracy"]
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(args.threads or 1,)) as pool:
        futures = {run(pool.submit, task): task[0] for task in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()["accuracy"]


def _paired(res: dict, a: str, b: str) -> dict:
    """Paired differences over the seeds both arms finished."""
    common = [s for s in res[a]["seeds"] if s in res[b]["seeds"]]
    pick = {arm: [x for s, x in zip(res[arm]["seeds"], res[arm]["per_seed"]) if s in common] for arm in (a, b)}
    return paired(pick[a], pick[b]) | {"seeds": common}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = p.parse_args(argv)
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    models = load_world() if args.models is None else load_world(args.models)
    world, fam = models.world, models.world.family_labels()
    scorer_path = args.scorer or models.path / SCORER
    if not scorer_path.is_file():  # fail before generating
        load_scorer(scorer_path)
    real = world.split("fewshot", args.shots)
    test = world.split("test", args.test_per_class)
    args.out.mkdir(parents=True, exist_ok=True)

    base = _overrides(args.set)
    arms = [Arm(pr, pr, base) for pr in args.presets] + [_extra(e, base, models.path) for e in args.extra]
    arms += [Arm(f"{field}={value}", "higfa", base | {field: value}) for field, values in _sweeps(args.sweep)
             for value in values]
    unknown = sorted(set(args.downstream) - {a.name for a in arms})
    if unknown:
        raise ValueError(f"--downstream {unknown}: not an arm of this run; choose from {[a.name for a in arms]}")
    names = [a.name for a in arms]
    for i, a in enumerate(arms):
        if a.boot_of is not None and a.boot_of not in names[:i]:
            raise ValueError(f"--extra {a.name}: guide={a.guide} needs the arm {a.boot_of!r} earlier in this run "
                             f"(its images train the guide); arms before it: {names[:i]}")
    guides = {a.guide: _guide(models, a.guide) for a in arms if a.boot_of is None}
    # where each guide's file is (a boot:ARM guide's once it is trained): what a tune= arm tunes
    guide_files = {a.guide: guide_file(a.guide, models.path) for a in arms if a.boot_of is None and a.guide != "oracle"}
    few = min(args.fidelity_shots or args.shots, args.shots)
    sources = {a.name: np.arange(len(real)) if a.name in args.downstream or few == args.shots else
               np.concatenate([real.of_class(c)[:few] for c in range(world.num_classes)]) for a in arms}
    caches = {a.name: args.out / f"{a.name}.npz" for a in arms}
    settings = {a.name: _gen_settings(args, a) | {"sources": len(sources[a.name])} for a in arms}
    for a in arms:  # a second-round guide is keyed by its recipe and by what its first round's images were
        if a.boot_of is not None:
            settings[a.name]["guide"] = {"boot": a.boot_of, "recipe": BOOT, "alpha": args.alpha,
                                         "first_round": settings[a.boot_of]}
            guide_files[a.guide] = args.out / f"guide-boot-{a.boot_of}.safetensors"
    # an arm that differs from an earlier one only in its confidence filter has the same images (the filter acts
    # after generation): they are that arm's, not generated again
    twin = {a.name: next((b.name for b in arms[:i] if _images_key(settings[b.name]) == _images_key(settings[a.name])),
                         None) for i, a in enumerate(arms)}
    stale = {a.name: twin[a.name] is None and (args.regenerate or not _cache_ok(caches[a.name], settings[a.name]))
             for a in arms}
    bar = tqdm(total=sum(len(sources[n]) for n in stale if stale[n]) * args.per_source * args.steps, desc="generate",
               unit="sample-step", file=sys.stdout, dynamic_ncols=True, disable=not any(stale.values()))
    generated = {}
    for a in arms:
        if a.guide not in guides:  # boot:ARM, once ARM's images exist
            guides[a.guide] = boot_guide(models, real, generated[a.boot_of], args.alpha, guide_files[a.guide],
                                         settings[a.name]["guide"])
        if a.guide_key not in guides:  # tune=EPS: the guide tuned on its own few-shot images' x̂0
            stem = Path(guide_files[a.guide]).name.removesuffix(".safetensors")
            guides[a.guide_key] = tuned_guide(str(args.models or "builtin"), guide_files[a.guide], a.tune,
                                              args.out / f"{stem}-tune{a.tune:g}.safetensors",
                                              {"guide": settings[a.name]["guide"], "tune": settings[a.name]["tune"],
                                               "models": settings[a.name]["models"]})
        if stale[a.name] and not args.regenerate and _cache_ok(caches[a.name], settings[a.name]):
            stale[a.name] = False  # another process (e.g. a --no-downstream prefill) cached it since the start
            bar.update(len(sources[a.name]) * args.per_source * args.steps)
        if stale[a.name]:
            bar.set_postfix_str(a.name)
            g = generate(models, a, guides[a.guide_key], real, sources[a.name], args.per_source, args.steps, args.batch,
                         args.seed, bar)
            meta = {k: v for k, v in g.items() if not isinstance(v, np.ndarray)} | {"settings": settings[a.name]}
            np.savez_compressed(caches[a.name], **{k: v for k, v in g.items() if isinstance(v, np.ndarray)},
                                meta=json.dumps(meta))
        if twin[a.name] is not None:
            generated[a.name] = {k: v for k, v in generated[twin[a.name]].items() if k != "keep"}
        else:
            data = np.load(caches[a.name])
            generated[a.name] = ({k: data[k] for k in ("images", "targets", "source", "contours")}
                                 | json.loads(str(data["meta"])))
        if a.filter is not None:  # the confidence filter, by a classifier that did not guide these images
            g = generated[a.name]
            p = predict(load_classifier(a.filter).float(), g["images"]).numpy()[np.arange(len(g["targets"])),
                                                                                 g["targets"]]
            g["keep"] = p >= a.filter_threshold
    bar.close()
    if args.downstream_from_cache:
        results = json.loads(args.results.read_text())
        results["downstream"] = downstream(args, world, generated, settings, test, tqdm(disable=True))
        results["settings"] |= {"seeds": args.seeds, "epochs": args.epochs, "alpha": args.alpha,
                                "downstream_shots": args.downstream_shots, "downstream_arch": args.downstream_arch}
        args.results.write_text(json.dumps(_finite(results), indent=1) + "\n")
        _write_doc(args.doc, report(results))
        return 0
    if args.only_downstream:
        # fills the run cache only: --results keeps the whole report (--downstream-from-cache rewrites its section)
        bar = tqdm(desc="downstream", unit="run", file=sys.stdout)
        print(json.dumps(downstream(args, world, generated, settings, test, bar), indent=1))
        return 0

    scorer = load_scorer(scorer_path)
    real_feats = features(scorer, real.images)
    test_oracle_feats = features(models.oracle, test.images)
    results: dict = {"presets": {}, "scorer": _scorer_info(scorer, scorer_path)}
    for a in arms:
        results["presets"][a.name] = score_arm(generated[a.name], a, scorer, guides[a.guide_key], models.oracle, fam,
                                               real, real_feats, test_oracle_feats) | {"preset": a.preset,
                                                                                       "overrides": a.overrides}
    results["real"] = {"fewshot": metrics.fidelity(scorer, real.images, real.labels, fam, "scorer")["species"],
                       "pixel_diversity": metrics.diversity(real.images, real.labels, real_feats)["within_class_pixel"]}
    # diagnosis: the scorer on real test images made as soft as the samples, and after the VAE
    sample_set = generated["higfa"]["images"] if "higfa" in generated else generated[arms[0].name]["images"]
    sigma = metrics.matched_blur(test.images, sample_set)
    recon = metrics.vae_roundtrip(models.vae, test.images)
    blurred = metrics.blur_images(test.images, sigma)

    def acc(clf, images, name):
        return metrics.fidelity(clf, images, test.labels, fam, name)["species"]

    results["scorer"] |= {"test": acc(scorer, test.images, "scorer"), "test_blurred": acc(scorer, blurred, "scorer"),
                          "matched_blur_sigma": sigma, "sharpness_samples": metrics.sharpness(sample_set),
                          "sharpness_test": metrics.sharpness(test.images),
                          "guide_test": acc(models.guidance, test.images, "guide"),
                          "world_oracle_test": acc(models.oracle, test.images, "world oracle"),
                          "world_oracle_test_blurred": acc(models.oracle, blurred, "world oracle")}
    results["ceiling"] = {"vae_oracle": acc(models.oracle, recon, "world oracle"), "vae_scored_by": "world oracle",
                          "vae_scorer": acc(scorer, recon, "scorer"), "sharpness_vae": metrics.sharpness(recon),
                          # KID references in the same oracle features: VAE round trips, and real few-shot images
                          "kid_oracle_vae": metrics.kid(features(models.oracle, recon), test_oracle_feats),
                          "kid_oracle_real_fewshot": metrics.kid(features(models.oracle, real.images),
                                                                 test_oracle_feats)}
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
        results["downstream"] = downstream(args, world, generated, settings, test, bar)
        bar.close()
    results["settings"] = {"shots": args.shots, "per_source": args.per_source, "steps": args.steps,
                           "batch": args.batch, "seed": args.seed, "schedule_overrides": base,
                           "arms": {a.name: dataclasses.asdict(a) for a in arms}, "sweep": [a.name for a in arms
                                                                                           if "=" in a.name],
                           "test_images": len(test), "downstream_arch": args.downstream_arch, "epochs": args.epochs,
                           "alpha": args.alpha, "seeds": args.seeds, "downstream_shots": args.downstream_shots,
                           "threads": torch.get_num_threads(),
                           "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}"}
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(_finite(results), indent=1) + "\n")
    text = report(results)
    print(text)
    _write_doc(args.doc, text)
    print(f"wrote {args.results}")
    return 0


def _finite(x):
    """NaN (e.g. within-species diversity with one image per species) -> None: strict JSON."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _write_doc(doc: Path | None, text: str) -> None:
    """The tables, then the hand-written notes kept from below the marker of the old file."""
    if doc is None:
        return
    doc.parent.mkdir(parents=True, exist_ok=True)
    old = doc.read_text() if doc.is_file() else ""
    kept = old[old.index(NOTES_MARKER):] if NOTES_MARKER in old else ""
    doc.write_text(text + ("\n" + kept if kept else ""))
    print(f"wrote {doc}")


def _guide(models, spec: str):
    if spec == "guidance":
        return models.guidance
    if spec == "oracle":
        return models.oracle
    return load_classifier(spec).float()


def _scorer_info(scorer, path: Path) -> dict:
    return {"path": str(path), "architecture": scorer.architecture,
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}


if __name__ == "__main__":
    raise SystemExit(main())
