"""`higfa check-classifier NAME --data VAL`: how good is a classifier before it guides?

Accuracy, per-class accuracy and the most confused class pairs on labelled images, and with
`--model` the **fooling gap** on a few samples the classifier guided itself (docs/classifiers.md):

    guided accuracy   share of guided samples the guide calls the target class
    scorer accuracy   share of the same samples an independent `--scorer` calls the target class
    fooling gap       guided accuracy − scorer accuracy (with --scorer), else
                      guided accuracy − the guide's accuracy on the real images of --data

A guide that is fooled by its own gradients calls nearly all its samples right while an independent
scorer does not: a large gap means the guidance writes adversarial patterns, not the class's markings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..classifier import Classifier, load_classifier
from ..seeds import derive_seed
from .guides import resolve_classifier
from .labelled import Labelled, read_labelled
from .model_path import model_path


def accuracy_report(clf: Classifier, data: Labelled, worst: int = 5) -> dict[str, Any]:
    """accuracy, n, per-class accuracy {name: acc}, and the `worst` confused pairs (true, predicted,
    count, share of the true class)."""
    from ..training import predict

    y = data.targets(clf.class_names)
    pred = predict(clf, data.images).argmax(1).numpy()
    K = clf.num_classes
    conf = np.zeros((K, K), dtype=np.int64)
    np.add.at(conf, (y, pred), 1)
    support = conf.sum(1)
    per_class = {clf.class_names[k]: round(float(conf[k, k] / support[k]), 4) for k in range(K) if support[k]}
    off = [(int(conf[i, j]), i, j) for i in range(K) for j in range(K) if i != j and conf[i, j]]
    pairs = [{"true": clf.class_names[i], "predicted": clf.class_names[j], "count": c,
              "share": round(c / int(support[i]), 4)} for c, i, j in sorted(off, key=lambda t: (-t[0], t[1], t[2]))]
    return {"accuracy": round(float((pred == y).mean()), 4), "n": int(len(y)), "per_class": per_class,
            "confused_pairs": pairs[:worst]}


def fooling_gap(clf: Classifier, data: Labelled, model: str, samples: int, steps: int, preset: str, seed: int,
                scorer: Classifier | None, real_accuracy: float) -> dict[str, Any]:
    """Guide `samples` images with `clf` on the world model `model` (one per real image of `data`, taken
    round-robin over classes, target = its own class) and measure the gap (module docstring)."""
    from ..schedule import Schedule
    from ..training import fooling_gap, predict
    from ..world.models import load_world

    folder = model_path(model)
    if not (folder / "world.json").is_file():
        raise ValueError(f"--model {model}: the fooling gap samples with the built-in world ('builtin') or a folder "
                         "made by `higfa train-world`. For an SD model, run `higfa augment` with this classifier and "
                         "check its outputs with `higfa check-classifier OTHER --data OUT` (OTHER: an independent "
                         "classifier)")
    world = load_world(folder)
    y = data.targets(clf.class_names)
    rank = np.zeros(len(y), dtype=np.int64)  # i-th image of its class: round-robin over classes
    for k in np.unique(y):
        rank[y == k] = np.arange(int((y == k).sum()))
    order = sorted(range(len(y)), key=lambda i: (rank[i], y[i]))[:samples]
    targets = [int(y[i]) for i in order]
    species = [world.world.class_names.index(clf.class_names[t]) if clf.class_names[t] in world.world.class_names
               else None for t in targets]
    if None in species:
        raise ValueError(f"classifier classes {clf.class_names[:3]}... are not the world's species: check the world "
                         "with its own classifier (or one trained on its images)")
    world.guidance = clf.float()
    images = data.images[order]
    if images.shape[1] != world.world.image_size:
        import cv2

        s = world.world.image_size
        images = np.stack([cv2.resize(im, (s, s), interpolation=cv2.INTER_AREA) for im in images])
    seeds = [derive_seed(seed, data.ids[i], 0) for i in order]  # the item seeds `higfa augment` gives them
    out = world.generate(Schedule.from_preset(preset), species, world.contours(images, seeds), seeds, steps=steps)
    p = predict(clf, out.images)
    t = torch.as_tensor(targets)
    guided_acc = float((p.argmax(1) == t).float().mean())
    res: dict[str, Any] = {"samples": len(order), "preset": preset, "steps": steps, "model": str(model),
                           "guided_accuracy": round(guided_acc, 4),
                           "guided_confidence": round(float(p[torch.arange(len(t)), t].mean()), 4)}
    if scorer is not None:
        gap = fooling_gap(p.argmax(1).numpy(), predict(scorer, out.images).argmax(1).numpy(), targets,
                          [scorer.resolve(clf.class_names[k]) for k in targets])
        res["scorer_accuracy"] = round(gap["independent_accuracy"], 4)
        res["fooling_gap"] = round(gap["fooling_gap"], 4)
        res["gap_definition"] = "guided_accuracy - scorer_accuracy (same guided samples)"
    else:
        res["real_accuracy"] = round(real_accuracy, 4)
        res["fooling_gap"] = round(guided_acc - real_accuracy, 4)
        res["gap_definition"] = "guided_accuracy - accuracy on the real images of --data (no --scorer)"
    return res


def format_table(report: dict[str, Any]) -> str:
    lines = [f"classifier {report['classifier']}: {report['num_classes']} classes",
             f"accuracy {report['accuracy']:.4f} on {report['n']} images of {report['data']}",
             "per class (worst first):"]
    for name, acc in sorted(report["per_class"].items(), key=lambda kv: kv[1])[:10]:
        lines.append(f"  {acc:6.3f}  {name}")
    if report["confused_pairs"]:
        lines.append("most confused (true -> predicted: count, share of the true class):")
        lines += [f"  {p['true']} -> {p['predicted']}: {p['count']} ({p['share']:.2f})"
                  for p in report["confused_pairs"]]
    fool = report.get("fooling")
    if fool:
        other = (f"scorer {fool['scorer_accuracy']:.3f}" if "scorer_accuracy" in fool
                 else f"real images {fool['real_accuracy']:.3f}")
        lines.append(f"fooling gap {fool['fooling_gap']:+.3f} on {fool['samples']} guided samples: guide calls "
                     f"{fool['guided_accuracy']:.3f} of them right (mean confidence {fool['guided_confidence']:.3f}), "
                     f"{other}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.samples < 1 or args.steps < 1:
        raise ValueError(f"--samples {args.samples} / --steps {args.steps}: must be >= 1")
    path = resolve_classifier(args.name)
    clf = load_classifier(path)
    data = read_labelled(args.data, clf.input_size[0])
    report: dict[str, Any] = {"classifier": str(path), "num_classes": clf.num_classes, "data": str(args.data),
                              **accuracy_report(clf, data, args.worst)}
    if args.model:
        scorer = load_classifier(resolve_classifier(args.scorer)) if args.scorer else None
        report["fooling"] = fooling_gap(clf, data, args.model, args.samples, args.steps, args.preset, args.seed,
                                        scorer, report["accuracy"])
    print(format_table(report))
    if args.json:
        text = json.dumps(report, indent=1)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            Path(args.json).write_text(text)
    return 0


def register(sub) -> None:
    p = sub.add_parser("check-classifier", help="accuracy, confusions and the fooling gap of a classifier",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the classifier: path of NAME.safetensors (its .json sidecar beside it)")
    p.add_argument("--data", required=True, help="labelled images: ImageFolder, manifest, or builtin:<split> "
                   "(e.g. builtin:test, the world's test split)")
    p.add_argument("--worst", type=int, default=5, help="how many confused pairs to list")
    p.add_argument("--model", help="measure the fooling gap by guiding samples on this model: 'builtin' or a "
                   "`higfa train-world` folder")
    p.add_argument("--scorer", help="an independent classifier (.safetensors) that scores the guided samples")
    p.add_argument("--samples", type=int, default=16, help="guided samples for the fooling gap (default 16)")
    p.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    p.add_argument("--preset", default="higfa", help="schedule preset for the guided samples (default higfa)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report as JSON to this file ('-': stdout)")
    p.set_defaults(func=run)
