"""`higfa evaluate`: did the augmentation pay off?

Trains the same timm classifier (same initialisation, same steps, same seed) twice per seed —
on the real training images, and on real + synthetic — and reports held-out accuracy on a test
ImageFolder (mean ± std over seeds, and the difference). The training loop is
`higfa.training.train_classifier`; models start from scratch (nothing is downloaded).

Synthetic images come from a `higfa augment` output folder (its manifest: images the confidence
filter marked are left out unless --include-below-threshold) or any ImageFolder. Class folders
are matched by name with the real training set.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import dataset


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 [N,H,W,3]
    labels: np.ndarray  # int64 [N]
    failed: list[str]  # unreadable files, skipped


def load_folder(root: str | Path, size: int, classes: list[str] | None = None,
                what: str = "images") -> tuple[ImageSet, list[str]]:
    """An ImageFolder as square uint8 arrays; `classes` fixes the label order (unknown folders are an error)."""
    items, found = dataset.scan_image_folder(root)
    classes = classes if classes is not None else found
    unknown = sorted({i.label for i in items} - set(classes))
    if unknown:
        raise ValueError(f"{what} in {root} have classes {unknown[:8]} that the real training set ({len(classes)} "
                         "classes) does not: use the same class folder names")
    return _load([(i.path, classes.index(i.label)) for i in items], size, root, what), classes


def load_synthetic(path: str | Path, size: int, classes: list[str], include_below: bool = False) -> ImageSet:
    """A `higfa augment` output folder (manifest.jsonl) or a plain ImageFolder of synthetic images."""
    path = Path(path)
    manifest = path / "manifest.jsonl"
    if not manifest.is_file():
        return load_folder(path, size, classes, "synthetic images")[0]
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("status") == "ok" and (include_below or not r.get("below_threshold"))]
    unknown = sorted({r["label"] for r in rows} - set(classes))
    if unknown:
        raise ValueError(f"synthetic images in {path} have labels {unknown[:8]} that the real training set does not")
    return _load([(path / r["output"], classes.index(r["label"])) for r in rows], size, path, "synthetic images")


def _load(pairs: list[tuple[Path, int]], size: int, root, what: str) -> ImageSet:
    from .item_sampler import SourceError, square_image

    images, labels, failed = [], [], []
    for p, y in pairs:
        try:
            images.append(square_image(p, size))
            labels.append(y)
        except SourceError:
            failed.append(str(p))
    if not images:
        raise ValueError(f"no readable {what} in {root}")
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), failed)


def compare(real: ImageSet, synthetic: ImageSet, test: ImageSet, classes: list[str], *, architecture: str,
            size: int, steps: int, seeds: list[int], batch_size: int = 64, lr: float = 3e-3,
            synthetic_share: float | None = None, device: str = "cpu", progress=None) -> dict:
    """Accuracy on `test` of real-only vs real+synthetic training, per seed. synthetic_share: the
    fraction of each batch drawn from synthetic images (None: uniform over the union)."""
    import torch

    from ..classifier import build_classifier
    from ..training import evaluate, train_classifier

    x_aug = np.concatenate([real.images, synthetic.images])
    y_aug = np.concatenate([real.labels, synthetic.labels])
    weights = None
    if synthetic_share is not None:
        if not 0.0 < synthetic_share < 1.0:
            raise ValueError(f"--synthetic-share {synthetic_share}: must lie strictly between 0 and 1")
        weights = np.concatenate([np.full(len(real.labels), (1 - synthetic_share) / len(real.labels)),
                                  np.full(len(synthetic.labels), synthetic_share / len(synthetic.labels))])
    arms = {"real": (real.images, real.labels, None), "real+synthetic": (x_aug, y_aug, weights)}
    results: dict[str, list[float]] = {k: [] for k in arms}
    per_class: dict[str, list[list[float]]] = {k: [] for k in arms}
    for seed in seeds:
        for arm, (x, y, w) in arms.items():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # the same initialisation for both arms
                clf = build_classifier(architecture, classes, size).to(device)
            r = train_classifier(clf, x, y, steps=steps, batch_size=batch_size, lr=lr, weights=w, seed=seed)
            ev = evaluate(r.classifier, test.images, test.labels)
            results[arm].append(ev["accuracy"])
            per_class[arm].append(ev["per_class"])
            if progress is not None:
                progress(seed, arm, ev["accuracy"])
    summary = {arm: {"mean": float(np.mean(a)), "std": float(np.std(a)), "per_seed": a,
                     "per_class_mean": np.nanmean(np.array(per_class[arm], dtype=float), 0).tolist()}
               for arm, a in results.items()}
    summary["delta"] = summary["real+synthetic"]["mean"] - summary["real"]["mean"]
    return summary


def run(args: argparse.Namespace) -> int:
    import torch

    from .distributed import Ranks, pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device, Ranks())
    real, classes = load_folder(args.real, args.size, what="real training images")
    synthetic = load_synthetic(args.synthetic, args.size, classes, args.include_below_threshold)
    test, _ = load_folder(args.test, args.size, classes, "test images")
    seeds = list(range(args.seeds))

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    say(f"higfa evaluate: {args.architecture} @ {args.size} px from scratch, {args.steps} steps x {len(seeds)} "
        f"seed(s); real {len(real.labels)}, synthetic {len(synthetic.labels)}, test {len(test.labels)} images, "
        f"{len(classes)} classes")
    for s in (real, synthetic, test):
        for f in s.failed:
            say(f"  skipped unreadable image: {f}")
    summary = compare(real, synthetic, test, classes, architecture=args.architecture, size=args.size, steps=args.steps,
                      seeds=seeds, batch_size=args.batch_size, lr=args.lr, synthetic_share=args.synthetic_share,
                      device=str(device), progress=lambda s, a, acc: say(f"  seed {s} {a:15s} accuracy {acc:.3f}"))
    report = {"classes": classes, "architecture": args.architecture, "size": args.size, "steps": args.steps,
              "seeds": seeds, "n_real": len(real.labels), "n_synthetic": len(synthetic.labels),
              "n_test": len(test.labels), "synthetic_share": args.synthetic_share, **summary}
    r, a = summary["real"], summary["real+synthetic"]
    say(f"  real only        : {r['mean']:.3f} ± {r['std']:.3f}")
    say(f"  real + synthetic : {a['mean']:.3f} ± {a['std']:.3f}   ({summary['delta']:+.3f})")
    if args.report:
        dataset.atomic_write_bytes(Path(args.report), (json.dumps(report, indent=1) + "\n").encode())
        say(f"  report: {args.report}")
    print(json.dumps({"real": r["mean"], "real+synthetic": a["mean"], "delta": summary["delta"]}))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="held-out accuracy of a classifier trained on real vs real + synthetic",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", required=True, help="ImageFolder of the real training images")
    p.add_argument("--synthetic", required=True, help="`higfa augment` --out folder, or an ImageFolder")
    p.add_argument("--test", required=True, help="held-out ImageFolder (same class folder names)")
    p.add_argument("--architecture", default="resnet18", help="timm model name (trained from scratch)")
    p.add_argument("--size", type=int, default=64, help="training/test image size in pixels (default 64)")
    p.add_argument("--steps", type=int, default=500, help="optimisation steps per run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seeds", type=int, default=3, help="runs per arm (seeds 0..n-1)")
    p.add_argument("--synthetic-share", type=float, help="fraction of each batch from synthetic images "
                   "(default: uniform over real + synthetic)")
    p.add_argument("--include-below-threshold", action="store_true", help="also train on images the filter marked")
    p.add_argument("--report", help="write the full JSON report here")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=run)
