"""The optional guidance parts on the built-in world: is the guide fooled less, and where does the gradient act?

For each configuration (the `higfa` preset plus schedule overrides, e.g. views=4) it samples one image per
few-shot source (the world's few-shot guide guides; the world's oracle, which never guides, scores) and reports:
oracle species / family accuracy, the guide's species accuracy on the same images, the fooling gap
(guide − oracle), and the fraction of the classifier gradient's energy inside the source's marking regions
(`Render.masks`, moved by the same contour-transform draw as the contour the sample follows), averaged over the
guided steps (`grad_map` is switched on for this; it only observes).

    python -m benchmarks.guidance_options --shots 2 --config views=4 --config views=4,classifier_scale=4

Writes --out (and prints a table). benchmarks/results/guidance_options.json collects the runs that chose the
`higfa-robust` preset (docs/method.md, docs/quality.md). Not run by `make test`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from higfa.classifier import load_classifier
from higfa.contour import ContourTransform
from higfa.schedule import Schedule
from higfa.training import fooling_gap, predict
from higfa.world.models import load_world

from .quality.arms import BENCH_DECODER
from .seeds import CONTOUR, NOISE, bench_seed

ROOT = Path(__file__).resolve().parents[1]


def _config(text: str) -> dict:
    """--config FIELD=V[,FIELD=V] -> typed Schedule overrides (`Schedule.parse_overrides`)."""
    return Schedule.parse_overrides(filter(None, text.split(",")), "--config")


def run(models, sources, masks, overrides: dict, steps: int, batch: int, seed: int) -> dict:
    schedule = Schedule.from_preset("higfa", **overrides, grad_map=True)
    transform = ContourTransform()
    images, inside, t0 = [], [], time.perf_counter()
    for b in range(0, len(sources.labels), batch):
        idx = list(range(b, min(b + batch, len(sources.labels))))
        contour_seeds = [bench_seed(seed, CONTOUR, i, 0) for i in idx]
        contours = models.contours(sources.images[idx], contour_seeds, transform)
        gen = models.generate(schedule, [int(sources.labels[i]) for i in idx], contours,
                              [bench_seed(seed, NOISE, i, 0) for i in idx], steps, guidance_decoder=BENCH_DECODER)
        images.append(gen.images)
        for j, (i, trace) in enumerate(zip(idx, gen.result.trace.split(len(idx)))):
            h, w = masks[i].shape
            moved = transform.sample(h, w, contour_seeds[j]).geometry(masks[i].astype(np.float32), cv2.INTER_NEAREST)
            fractions = trace.energy_inside(moved)
            if fractions:
                inside.append(float(np.mean(fractions)))
    images = np.concatenate(images)
    t = sources.labels
    fam = models.world.family_labels()
    pred = predict(models.oracle, images).argmax(1).numpy()
    guide = predict(models.guidance, images).argmax(1).numpy()
    gap = fooling_gap(guide, pred, t)
    return {"overrides": overrides, "n": int(len(t)), "oracle_species": gap["independent_accuracy"],
            "oracle_family": float((fam[pred] == fam[t]).mean()), "guide_species": gap["guided_accuracy"],
            "fooling_gap": gap["fooling_gap"],
            "grad_energy_in_markings": float(np.mean(inside)) if inside else None,
            "marking_area": float(np.mean([m.mean() for m in masks])),
            "seconds_per_image": (time.perf_counter() - t0) / len(t)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shots", type=int, default=2, help="few-shot sources per species (1 image each)")
    p.add_argument("--config", action="append", default=None, metavar="FIELD=V[,FIELD=V]",
                   help="schedule overrides of one configuration (repeatable); '' = the preset itself")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--guide", type=Path, default=None,
                   help="guidance classifier file (default: the shipped few-shot guide; never the oracle: it scores)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "guidance_options.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = args.config if args.config is not None else ["", "views=4"]
    models = load_world()
    if args.guide is not None:
        models.guidance = load_classifier(args.guide).float()
    sources = models.world.split("fewshot", args.shots, masks=True)
    guide = str(args.guide or "few-shot guidance classifier")
    results = {"settings": {"preset": "higfa", "shots": args.shots, "steps": args.steps, "seed": args.seed,
                            "scorer": "oracle (never guides)", "guide": guide,
                            "threads": torch.get_num_threads(), "torch": torch.__version__}, "configs": {}}
    print(f"{'config':40s} oracle  family  guide   gap    energy-in-markings  s/img")
    for text in configs:
        r = run(models, sources, sources.masks, _config(text), args.steps, args.batch, args.seed)
        results["configs"][text or "higfa"] = r
        e = r["grad_energy_in_markings"]
        print(f"{text or 'higfa':40s} {r['oracle_species']:.3f}  {r['oracle_family']:.3f}  {r['guide_species']:.3f}"
              f"  {r['fooling_gap']:+.3f}  {'-' if e is None else f'{e:.3f}':>8s} (area {r['marking_area']:.3f})"
              f"  {r['seconds_per_image']:.2f}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
