"""`make bench-quality`: does HiGFA make better fine-grained training images than its ablations?

On the built-in tiny world (higfa/world/birds.py, models in higfa/world/assets/), for every preset of
docs/method.md (cfg, contour, classifier-all-steps, higfa) and every species:

1. generate `per_source` images per real few-shot image (10 per species): family prompt, the
   transformed contour of that real image, the few-shot guidance classifier aimed at its species;
   the same noise and contour seeds for every preset (paired comparison);
2. fidelity: the independent oracle's accuracy w.r.t. the intended species (and family), its mean
   p(intended species), and the guidance classifier's own accuracy on the final images;
3. diversity: mean pairwise distance among same-species samples and mean distance of a sample to
   its source image, in the oracle's feature space (cosine distance of pre-logit features) and in
   pixels (RMS over the 64x64 RGB image in [0,1]); the real few-shot images give the reference;
4. downstream: a fresh few-shot classifier (same recipe as the guidance classifier) trained on the
   160 real images alone vs. real + the synthetic images of each preset, accuracy on 800 held-out
   real test images, mean ± std over 3 seeds;
5. sensitivity: `higfa` again with one schedule field changed at a time (--sweep), fidelity and
   diversity only, to show what the knobs do on this world.

Writes docs/quality.md (tables + settings) and outputs/bench_quality/results.json; generated
images are cached in outputs/bench_quality/<preset>.npz (--regenerate to redo them).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from higfa.classifier import build_classifier  # noqa: E402
from higfa.contour import ContourTransform  # noqa: E402
from higfa.schedule import Schedule  # noqa: E402
from higfa.training import Augment, evaluate, features, predict, train_classifier  # noqa: E402
from higfa.world.models import load_world  # noqa: E402

PRESETS = ("cfg", "contour", "classifier-all-steps", "higfa")
NOTES_MARKER = "<!-- notes below are kept when benchmarks/quality.py rewrites this file -->"


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint32)[0])


def generate_preset(models, preset: str, sources, per_source: int, steps: int, batch: int, seed: int, bar,
                    overrides: dict | None = None) -> dict:
    """Images [N,H,W,3] uint8, targets [N], source index [N], seconds, guidance counts."""
    items = [(i, k) for i in range(len(sources)) for k in range(per_source)]
    schedule = Schedule.from_preset(preset, **(overrides or {}))
    images, targets, src, guided, gated = [], [], [], 0, 0
    t0 = time.perf_counter()
    for b in range(0, len(items), batch):
        chunk = items[b:b + batch]
        idx = [i for i, _ in chunk]
        tg = [int(sources.labels[i]) for i in idx]
        contour_seeds = [_seed(seed, 1, i, k) for i, k in chunk]
        noise_seeds = [_seed(seed, 2, i, k) for i, k in chunk]
        contours = models.contours(sources.images[idx], contour_seeds, ContourTransform())
        gen = models.generate(schedule, tg, contours, noise_seeds, steps, callback=lambda *_: bar.update(len(chunk)))
        images.append(gen.images)
        targets += tg
        src += idx
        summary = gen.result.trace.summary()
        guided += summary["guided_sample_steps"]
        gated += summary["gated_sample_steps"]
    return {"images": np.concatenate(images), "targets": np.array(targets), "source": np.array(src),
            "seconds": time.perf_counter() - t0, "guided_sample_steps": guided, "gated_sample_steps": gated}


def _pairwise_mean(x: torch.Tensor, metric: str) -> float:
    """Mean distance over distinct pairs of rows of x [n, d]."""
    if len(x) < 2:
        return float("nan")
    if metric == "cosine":
        f = torch.nn.functional.normalize(x, dim=1)
        d = 1 - f @ f.T
    else:
        d = torch.cdist(x, x) / x.shape[1] ** 0.5  # RMS distance
    n = len(x)
    return float((d.sum() - d.diag().sum()) / (n * (n - 1)))


def _mean_finite(values) -> float:
    """Mean over classes that have a pair (nan when none has: one image per class)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def diversity(images: np.ndarray, labels: np.ndarray, feats: torch.Tensor, source_images: np.ndarray | None = None,
              source_feats: torch.Tensor | None = None) -> dict:
    pix = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    within_f = [_pairwise_mean(feats[labels == c], "cosine") for c in np.unique(labels)]
    within_p = [_pairwise_mean(pix[labels == c], "rms") for c in np.unique(labels)]
    out = {"within_class_feature": _mean_finite(within_f), "within_class_pixel": _mean_finite(within_p)}
    if source_images is not None:
        sp = torch.from_numpy(source_images.reshape(len(source_images), -1).astype(np.float32) / 255.0)
        f, s = torch.nn.functional.normalize(feats, dim=1), torch.nn.functional.normalize(source_feats, dim=1)
        out["to_source_feature"] = float((1 - (f * s).sum(1)).mean())
        out["to_source_pixel"] = float(((pix - sp) ** 2).mean(1).sqrt().mean())
    return out


def downstream(models, real, test, synthetic: dict, seeds, steps: int, bar) -> dict:
    """Test accuracy of a fresh few-shot classifier per training set and seed."""
    world = models.world
    arch = models.guidance.architecture
    sets = {"real only": (real.images, real.labels)}
    for preset, g in synthetic.items():
        sets[f"real + {preset}"] = (np.concatenate([real.images, g["images"]]), np.concatenate([real.labels, g["targets"]]))
    out = {}
    for name, (x, y) in sets.items():
        accs = []
        for s in seeds:
            torch.manual_seed(1000 + s)
            clf = build_classifier(arch, world.class_names, world.image_size, mean=(0.5,) * 3, std=(0.5,) * 3)
            r = train_classifier(clf, x, y, steps=steps, seed=1000 + s, augment=Augment(noise=0.03, blur=1.0))
            accs.append(evaluate(r.classifier, test.images, test.labels)["accuracy"])
            bar.update(1)
        out[name] = {"accuracies": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs)),
                     "train_images": int(len(y))}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--shots", type=int, default=10, help="real images per species (sources and downstream)")
    p.add_argument("--per-source", type=int, default=1, help="synthetic images per real image")
    p.add_argument("--steps", type=int, default=30, help="sampling steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--train-steps", type=int, default=200, help="downstream classifier training steps (batch 64)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="downstream training seeds")
    p.add_argument("--seed", type=int, default=0, help="generation seed")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--models", type=Path, default=None, help="world models folder (default: the shipped ones)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_quality")
    p.add_argument("--doc", type=lambda s: Path(s) if s else None, default=ROOT / "docs" / "quality.md",
                   help="markdown report ('' = none)")
    p.add_argument("--regenerate", action="store_true", help="ignore cached generated images")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="schedule overrides for every preset (e.g. classifier_scale=2); default: core defaults")
    p.add_argument("--sweep", nargs="*", default=["classifier_scale=0.5,2,4,8", "stage_boundary=0.5,0.85"],
                   metavar="FIELD=V1,V2", help="also run `higfa` with one schedule field at each value (fidelity "
                   "and diversity only); --sweep with no values: none")
    p.add_argument("--no-downstream", action="store_true")
    args = p.parse_args(argv)
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    models = load_world() if args.models is None else load_world(args.models)
    world = models.world
    real = world.split("fewshot", args.shots)
    test = world.split("test", args.test_per_class)
    args.out.mkdir(parents=True, exist_ok=True)

    # (name, preset, schedule overrides, cache file): the presets, then the one-at-a-time sweep of `higfa`
    runs = [(pr, pr, _overrides(args.set), args.out / f"{pr}.npz") for pr in args.presets]
    sweep_runs = [(f"{field}={value}", "higfa", _overrides(args.set) | {field: value},
                   args.out / f"sweep-{field}-{value}.npz") for field, values in _sweeps(args.sweep) for value in values]
    stale = [args.regenerate or not _cache_ok(cache, _gen_settings(args, overrides))
             for _, _, overrides, cache in runs + sweep_runs]
    bar = tqdm(total=sum(stale) * len(real) * args.per_source * args.steps, desc="generate", unit="sample-step",
               file=sys.stdout, dynamic_ncols=True, disable=not any(stale))
    generated = {}
    for (name, preset, overrides, cache), redo in zip(runs + sweep_runs, stale):
        if redo:
            bar.set_postfix_str(name)
            g = generate_preset(models, preset, real, args.per_source, args.steps, args.batch, args.seed, bar,
                                overrides)
            np.savez_compressed(cache, **{k: v for k, v in g.items() if isinstance(v, np.ndarray)},
                                meta=json.dumps({k: v for k, v in g.items() if not isinstance(v, np.ndarray)}
                                                | {"settings": _gen_settings(args, overrides)}))
        data = np.load(cache)
        generated[name] = {k: data[k] for k in ("images", "targets", "source")} | json.loads(str(data["meta"]))
    bar.close()
    synthetic = {name: generated[name] for name, *_ in runs}

    fam = world.family_labels()
    real_feats = features(models.oracle, real.images)
    results = {"fidelity": {}, "diversity": {}}
    real_pred = predict(models.oracle, real.images).argmax(1).numpy()
    results["fidelity"]["real (few-shot set)"] = {"oracle_accuracy": float((real_pred == real.labels).mean()),
                                                  "oracle_family_accuracy": float((fam[real_pred] == fam[real.labels]).mean())}
    results["diversity"]["real (few-shot set)"] = diversity(real.images, real.labels, real_feats)
    for preset, g in generated.items():
        probs = predict(models.oracle, g["images"])
        pred = probs.argmax(1).numpy()
        t = g["targets"]
        gprobs = predict(models.guidance, g["images"])
        results["fidelity"][preset] = {
            "oracle_accuracy": float((pred == t).mean()),
            "oracle_family_accuracy": float((fam[pred] == fam[t]).mean()),
            "oracle_p_target": float(probs[np.arange(len(t)), t].mean()),
            "guidance_accuracy": float((gprobs.argmax(1).numpy() == t).mean()),
            "per_class_oracle_accuracy": [float((pred[t == c] == c).mean()) for c in range(world.num_classes)],
            "seconds_per_image": g["seconds"] / len(t), "guided_sample_steps": g["guided_sample_steps"],
            "gated_sample_steps": g["gated_sample_steps"], "n": int(len(t))}
        feats = features(models.oracle, g["images"])
        results["diversity"][preset] = diversity(g["images"], t, feats, real.images[g["source"]], real_feats[g["source"]])
    results["sweep"] = [name for name, *_ in sweep_runs]

    if not args.no_downstream:
        bar = tqdm(total=(1 + len(synthetic)) * len(args.seeds), desc="downstream", unit="run", file=sys.stdout, dynamic_ncols=True)
        results["downstream"] = downstream(models, real, test, synthetic, args.seeds, args.train_steps, bar)
        bar.close()
    results["settings"] = _gen_settings(args, _overrides(args.set)) | {
        "test_images": len(test), "train_steps": args.train_steps, "seeds": args.seeds,
        "downstream_classifier": models.guidance.architecture, "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}"}
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = report(results)
    print(text)
    if args.doc is not None:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        old = args.doc.read_text() if args.doc.is_file() else ""
        kept = old[old.index(NOTES_MARKER):] if NOTES_MARKER in old else ""
        args.doc.write_text(text + ("\n" + kept if kept else ""))
        print(f"wrote {args.doc}")
    return 0


def _overrides(items) -> dict:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        default = getattr(Schedule(), name, None)
        if default is None or not value:
            raise ValueError(f"--set {item!r}: use FIELD=VALUE with a Schedule field")
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


def _gen_settings(args, overrides: dict) -> dict:
    return {"shots": args.shots, "per_source": args.per_source, "steps": args.steps,
            "batch": args.batch, "seed": args.seed, "contour_transform": ContourTransform().to_dict(),
            "schedule_overrides": overrides}


def _cache_ok(cache: Path, settings: dict) -> bool:
    if not cache.is_file():
        return False
    try:
        meta = json.loads(str(np.load(cache)["meta"]))
    except Exception:
        return False
    return {k: v for k, v in meta.get("settings", {}).items() if k != "presets"} == settings


def report(r: dict) -> str:
    s = r["settings"]
    lines = ["# Quality benchmark on the built-in tiny world", "",
             "Generated by `make bench-quality` (`benchmarks/quality.py`); every number below can be regenerated.",
             "What is measured and why: see the module docstring and docs/world.md.", "",
             f"Settings: {s['shots']} real images per species (16 species) as sources, {s['per_source']} synthetic "
             f"image(s) per source and preset, {s['steps']} DDIM steps, batch {s['batch']}, generation seed "
             f"{s['seed']}, contour transform amount {s['contour_transform']['amount']}, schedules: each preset's "
             f"core defaults{' with ' + str(s['schedule_overrides']) if s['schedule_overrides'] else ''}. Downstream: `{s['downstream_classifier']}` trained {s['train_steps']} steps from scratch, "
             f"seeds {s['seeds']}, tested on {s['test_images']} held-out real images. {s['machine']}, "
             f"{s['threads']} thread(s); whole run {r['seconds_total'] / 60:.1f} min.", "",
             "## Fidelity (does the image show the intended species?)", "",
             "| images | oracle acc. (species) | oracle acc. (family) | oracle p(target) | guidance-classifier acc. | s / image |",
             "|---|---|---|---|---|---|"]
    sweep = set(r.get("sweep", []))
    for name, f in r["fidelity"].items():
        if name in sweep:
            continue
        lines.append(f"| {name} | {f['oracle_accuracy']:.3f} | {f['oracle_family_accuracy']:.3f} | "
                     f"{_fmt(f.get('oracle_p_target'))} | {_fmt(f.get('guidance_accuracy'))} | "
                     f"{_fmt(f.get('seconds_per_image'), 2)} |")
    lines += ["", "Chance is 1/16 = 0.0625 for species; a model that draws the right family but random markings "
              "scores about 0.25.", "",
              "## Diversity", "",
              "| images | within-species (oracle features, cosine) | within-species (pixels, RMS) | "
              "to source (features) | to source (pixels) |", "|---|---|---|---|---|"]
    for name, d in r["diversity"].items():
        if name in sweep:
            continue
        lines.append(f"| {name} | {d['within_class_feature']:.3f} | {d['within_class_pixel']:.3f} | "
                     f"{_fmt(d.get('to_source_feature'))} | {_fmt(d.get('to_source_pixel'))} |")
    if sweep:
        lines += ["", "## Sensitivity of `higfa` (one schedule field changed, the rest at the preset's defaults)", "",
                  "| change | oracle acc. (species) | oracle acc. (family) | oracle p(target) | "
                  "within-species (features) | within-species (pixels) | to source (features) |",
                  "|---|---|---|---|---|---|---|"]
        for name in r["sweep"]:
            f, d = r["fidelity"][name], r["diversity"][name]
            lines.append(f"| {name} | {f['oracle_accuracy']:.3f} | {f['oracle_family_accuracy']:.3f} | "
                         f"{f['oracle_p_target']:.3f} | {d['within_class_feature']:.3f} | "
                         f"{d['within_class_pixel']:.3f} | {d['to_source_feature']:.3f} |")
    if "downstream" in r:
        lines += ["", "## Downstream (few-shot classifier, held-out real test accuracy)", "",
                  "| training set | images | accuracy (mean ± std) | per seed |", "|---|---|---|---|"]
        for name, d in r["downstream"].items():
            lines.append(f"| {name} | {d['train_images']} | {d['mean']:.3f} ± {d['std']:.3f} | "
                         f"{', '.join(f'{a:.3f}' for a in d['accuracies'])} |")
    return "\n".join(lines) + "\n"


def _fmt(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


if __name__ == "__main__":
    raise SystemExit(main())
