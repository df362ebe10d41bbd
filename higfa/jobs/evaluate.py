"""`higfa evaluate`: did the augmentation pay off?

Trains the same timm classifier (same initialisation, same batch seed, same number of epochs)
twice per seed — on the real training images, and with the synthetic images — and reports
held-out accuracy on a test ImageFolder (mean ± std over seeds, the per-seed paired differences
and their 95 % confidence interval). The training loop is `higfa.training.train_classifier`;
models start from scratch (nothing is downloaded).

Protocols (--protocol):
- `saspa` (default; SaSPA, Michaeli & Fried 2024): every time a real image is drawn, it is
  replaced with probability α (--alpha, 0.4) by one of its own synthetic variants (the manifest's
  `source`; for a plain ImageFolder, by a synthetic image of its class). The training set keeps
  the real set's size, so both arms train the same epochs. Draws are with replacement
  (`train_classifier`'s weighted sampling), i.e. the per-draw expectation of SaSPA's per-epoch
  replacement.
- `concat`: real + synthetic as one uniform set (or --synthetic-share of every batch).

Synthetic images come from a `higfa augment` output folder (its manifest: images the confidence
filter marked are left out unless --include-below-threshold; --label-weights weighs each by its
recorded confidence) or any ImageFolder. Class folders are matched by name with the real set.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from . import dataset


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 [N,H,W,3]
    labels: np.ndarray  # int64 [N]
    failed: list[str]  # unreadable files, skipped
    ids: list[str] | None = None  # real sets: path relative to the root ('/'-separated), as augment names sources
    sources: list[str | None] | None = None  # synthetic sets from a manifest: the source id of each image
    confidence: np.ndarray | None = None  # synthetic sets from a manifest: [N] recorded confidence (nan: none)


def load_folder(root: str | Path, size: int, classes: list[str] | None = None,
                what: str = "images") -> tuple[ImageSet, list[str]]:
    """An ImageFolder as square uint8 arrays; `classes` fixes the label order (unknown folders are an error)."""
    items, found = dataset.scan_image_folder(root)
    classes = classes if classes is not None else found
    unknown = sorted({i.label for i in items} - set(classes))
    if unknown:
        raise ValueError(f"{what} in {root} have classes {unknown[:8]} that the real training set ({len(classes)} "
                         "classes) does not: use the same class folder names")
    return _load([(i.path, classes.index(i.label), {"id": i.id}) for i in items], size, root, what), classes


def load_synthetic(path: str | Path, size: int, classes: list[str], include_below: bool = False) -> ImageSet:
    """A `higfa augment` output folder (manifest.jsonl) or a plain ImageFolder of synthetic images."""
    path = Path(path)
    manifest = path / "manifest.jsonl"
    if not manifest.is_file():
        s = load_folder(path, size, classes, "synthetic images")[0]
        return ImageSet(s.images, s.labels, s.failed)
    rows = read_synthetic_rows(manifest)
    rows = [r for r in rows if r.get("status") == "ok" and (include_below or not r.get("below_threshold"))]
    unknown = sorted({r["label"] for r in rows} - set(classes))
    if unknown:
        raise ValueError(f"synthetic images in {path} have labels {unknown[:8]} that the real training set does not")
    return _load([(path / r["output"], classes.index(r["label"]), {"source": r.get("source"),
                   "confidence": r.get("confidence")}) for r in rows], size, path, "synthetic images")


def read_synthetic_rows(manifest: Path) -> list[dict]:
    """The rows of a `higfa augment` manifest.jsonl. An 'ok' row must name its image ('output', a path relative to
    the folder that stays inside it after resolving) and its 'label': else a one-line error naming the line."""
    root = manifest.parent.resolve()
    rows = []
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"--synthetic {manifest} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg}); rerun `higfa merge` on the folder") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a row must be a JSON object (as `higfa augment` writes)")
        if row.get("status") == "ok":
            out, label = row.get("output"), row.get("label")
            if not isinstance(out, str) or not out or not isinstance(label, str):
                raise ValueError(f"{where}: an 'ok' row needs 'output' (the image's path in the folder) and "
                                 "'label'; fix or remove the row")
            if not (root / out).resolve().is_relative_to(root):
                raise ValueError(f"{where}: output {out!r} leaves the --synthetic folder; only images inside it are "
                                 "read: fix or remove the row")
        rows.append(row)
    return rows


def _load(items: list[tuple[Path, int, dict]], size: int, root, what: str) -> ImageSet:
    from .dataset import SourceError, square_image

    images, labels, failed, kept = [], [], [], []
    for p, y, extra in items:
        try:
            images.append(square_image(p, size))
            labels.append(y)
            kept.append(extra)
        except SourceError:
            failed.append(str(p))
    if not images:
        raise ValueError(f"no readable {what} in {root}")
    out = ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), failed)
    if all("id" in e for e in kept):
        out.ids = [e["id"] for e in kept]
    if all("source" in e for e in kept):
        out.sources = [e["source"] for e in kept]
        out.confidence = np.array([np.nan if e["confidence"] is None else float(e["confidence"]) for e in kept])
    return out


def source_index(real: ImageSet, synthetic: ImageSet) -> np.ndarray:
    """[M] index into `real` of each synthetic image's source (-1: unknown, e.g. a plain ImageFolder)."""
    if synthetic.sources is None or real.ids is None:
        return np.full(len(synthetic.labels), -1, dtype=np.int64)
    where = {i: k for k, i in enumerate(real.ids)}
    return np.array([where.get(s, -1) if s is not None else -1 for s in synthetic.sources], dtype=np.int64)


def check_alpha(alpha: float) -> None:
    """SaSPA's replacement probability must lie in [0, 1] (checked before any image is read)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha {alpha}: the replacement probability must lie in [0, 1]")


def replacement_set(real_images: np.ndarray, real_labels: np.ndarray, synthetic_images: np.ndarray,
                    synthetic_labels: np.ndarray, source: np.ndarray, alpha: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real + synthetic images [N+M,...], labels [N+M] and `replacement_weights` [N+M]: one training set for
    SaSPA's protocol (`train_classifier(..., weights=w)`)."""
    return (np.concatenate([real_images, synthetic_images]), np.concatenate([real_labels, synthetic_labels]),
            replacement_weights(real_labels, synthetic_labels, source, alpha))


def replacement_weights(real_labels: np.ndarray, synthetic_labels: np.ndarray, source: np.ndarray, alpha: float,
                        label_weights: np.ndarray | None = None) -> np.ndarray:
    """SaSPA's replacement as sampling weights [N + M] over real + synthetic images.

    Each real image is drawn with probability (1 - α)/N, and with α/N one of its synthetic variants
    instead (uniformly). `source` [M]: the real index a synthetic image came from; -1 (unknown):
    it counts as a variant of every real image of its class. Real images without variants keep 1/N.
    label_weights [M] in [0, 1] (e.g. a classifier's confidence) scale each variant's weight: in
    expectation a loss weight, since a sample drawn c times less often contributes c times less.
    """
    real_labels, synthetic_labels = np.asarray(real_labels), np.asarray(synthetic_labels)
    source = np.asarray(source, dtype=np.int64)
    n, m = len(real_labels), len(synthetic_labels)
    check_alpha(alpha)
    if len(source) != m or (m and int(source.max()) >= n):
        raise ValueError(f"replacement_weights: {m} synthetic images need {m} source indices below {n}")
    # group of a real image: itself; of a synthetic one: its source, or its class (offset by n) when unknown
    syn_group = np.where(source >= 0, source, n + synthetic_labels)
    groups, counts = np.unique(syn_group, return_counts=True)
    per_group = dict(zip(groups.tolist(), counts.tolist()))
    real_per_class = np.bincount(real_labels, minlength=int(max(real_labels.max(), synthetic_labels.max(initial=0)))
                                 + 1)
    has = np.array([i in per_group or (n + int(c)) in per_group for i, c in enumerate(real_labels)])
    w_real = np.where(has, 1 - alpha, 1.0) / n
    real_in_group = np.where(source >= 0, 1, real_per_class[synthetic_labels])
    w_syn = alpha * real_in_group / (n * np.array([per_group[g] for g in syn_group.tolist()], dtype=float))
    if label_weights is not None:
        lw = np.nan_to_num(np.asarray(label_weights, dtype=float), nan=1.0)
        if len(lw) != m or (lw < 0).any():
            raise ValueError(f"label weights must be {m} non-negative numbers, one per synthetic image")
        w_syn = w_syn * lw
    return np.concatenate([w_real, w_syn])


# Student t quantile 0.975 for 1..30 degrees of freedom (beyond: 30's, within 0.04 of the normal's 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def paired(a: list[float], b: list[float]) -> dict:
    """Per-seed differences a - b, their mean and a two-sided 95 % t confidence interval."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        return {"per_seed": d.tolist(), "mean": float(d.mean()) if len(d) else float("nan"), "ci95": None}
    half = float(_T975[min(len(d) - 1, len(_T975)) - 1] * d.std(ddof=1) / np.sqrt(len(d)))
    return {"per_seed": d.tolist(), "mean": float(d.mean()), "ci95": [float(d.mean()) - half, float(d.mean()) + half]}


def train_and_test(x: np.ndarray, y: np.ndarray, test: ImageSet, classes: list[str], *, architecture: str, size: int,
                   steps: int, seed: int, weights: np.ndarray | None = None, batch_size: int = 64, lr: float = 3e-3,
                   augment=None, device: str = "cpu") -> dict:
    """One run: a fresh classifier (initialised from `seed`) trained on x/y, evaluated on `test`."""
    import torch

    from ..classifier import build_classifier
    from ..training import Augment, evaluate, train_classifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same initialisation for every arm of a seed
        clf = build_classifier(architecture, classes, size, mean=(0.5,) * 3, std=(0.5,) * 3).to(device)
    r = train_classifier(clf, x, y, steps=steps, batch_size=batch_size, lr=lr, weights=weights, seed=seed,
                         augment=Augment() if augment is None else augment)
    return evaluate(r.classifier, test.images, test.labels)


def compare(real: ImageSet, synthetic: ImageSet, test: ImageSet, classes: list[str], *, architecture: str,
            size: int, steps: int | None = None, seeds: list[int], batch_size: int = 64, lr: float = 3e-3,
            protocol: str = "saspa", alpha: float = 0.4, epochs: int | None = None, label_weights: bool = False,
            synthetic_share: float | None = None, device: str = "cpu", progress=None) -> dict:
    """Accuracy on `test` of real-only vs with-synthetic training, per seed (paired: same
    initialisation and batch seed). steps: per run; or epochs (over the real set's size, both arms)."""
    if protocol not in ("saspa", "concat"):
        raise ValueError(f"--protocol {protocol!r}: choose saspa or concat")
    if (steps is None) == (epochs is None):
        raise ValueError("give either --steps or --epochs")
    n = len(real.labels)
    x_aug = np.concatenate([real.images, synthetic.images])
    y_aug = np.concatenate([real.labels, synthetic.labels])
    lw = synthetic.confidence if label_weights else None
    if label_weights and lw is None:
        raise ValueError("--label-weights needs a `higfa augment` folder whose manifest records confidences")
    if protocol == "saspa":
        if synthetic_share is not None:
            raise ValueError("--synthetic-share applies to --protocol concat; saspa uses --alpha")
        weights = replacement_weights(real.labels, synthetic.labels, source_index(real, synthetic), alpha, lw)
        n_aug = n  # replacement keeps the set's size: the same epochs for both arms
    else:
        weights = None
        if synthetic_share is not None:
            if not 0.0 < synthetic_share < 1.0:
                raise ValueError(f"--synthetic-share {synthetic_share}: must lie strictly between 0 and 1")
            weights = np.concatenate([np.full(n, (1 - synthetic_share) / n),
                                      np.full(len(synthetic.labels), synthetic_share / len(synthetic.labels))])
        elif lw is not None:
            weights = np.concatenate([np.ones(n), np.nan_to_num(lw, nan=1.0)])
        n_aug = len(y_aug)
    arms = {"real": (real.images, real.labels, None, n), "real+synthetic": (x_aug, y_aug, weights, n_aug)}
    results: dict[str, list[float]] = {k: [] for k in arms}
    per_class: dict[str, list[list[float]]] = {k: [] for k in arms}
    arm_steps = {}
    for seed in seeds:
        for arm, (x, y, w, size_) in arms.items():
            arm_steps[arm] = steps if epochs is None else max(1, round(epochs * size_ / batch_size))
            ev = train_and_test(x, y, test, classes, architecture=architecture, size=size, steps=arm_steps[arm],
                                seed=seed, weights=w, batch_size=batch_size, lr=lr, device=device)
            results[arm].append(ev["accuracy"])
            per_class[arm].append(ev["per_class"])
            if progress is not None:
                progress(seed, arm, ev["accuracy"])
    summary = {arm: {"mean": float(np.mean(a)), "std": float(np.std(a)), "per_seed": a, "steps": arm_steps[arm],
                     "per_class_mean": np.nanmean(np.array(per_class[arm], dtype=float), 0).tolist()}
               for arm, a in results.items()}
    summary["delta"] = summary["real+synthetic"]["mean"] - summary["real"]["mean"]
    summary["paired"] = paired(results["real+synthetic"], results["real"])
    return summary


MAX_SIZE = 1024  # pixels: a classifier trained from scratch per seed and arm; larger sizes only exhaust memory


def check_args(args: argparse.Namespace) -> None:
    """Every number of `higfa evaluate`, before any image is read: a one-line error naming the option."""
    for name in ("seeds", "epochs", "steps", "batch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be >= 1")
    if not 8 <= args.size <= MAX_SIZE:
        raise ValueError(f"--size {args.size}: must lie in [8, {MAX_SIZE}] pixels (default 64)")
    if not args.lr > 0:
        raise ValueError(f"--lr {args.lr}: must be > 0")
    check_alpha(args.alpha)


def run(args: argparse.Namespace) -> int:
    import torch

    from .distributed import Ranks, pick_device

    check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device, Ranks())
    if Path(args.test).expanduser().resolve() == Path(args.real).expanduser().resolve():
        print(f"higfa evaluate: warning: --test {args.test} is the --real training folder: the accuracy is measured "
              "on the training images, not held out; pass a separate test folder", file=sys.stderr, flush=True)
    real, classes = load_folder(args.real, args.size, what="real training images")
    synthetic = load_synthetic(args.synthetic, args.size, classes, args.include_below_threshold)
    test, _ = load_folder(args.test, args.size, classes, "test images")
    seeds = list(range(args.seeds))
    steps = None if args.epochs is not None else (args.steps if args.steps is not None else 500)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    length = f"{args.epochs} epochs" if args.epochs is not None else f"{steps} steps"
    say(f"higfa evaluate ({args.protocol}{f', alpha {args.alpha}' if args.protocol == 'saspa' else ''}): "
        f"{args.architecture} @ {args.size} px from scratch, {length} x {len(seeds)} seed(s); "
        f"real {len(real.labels)}, synthetic {len(synthetic.labels)}, test {len(test.labels)} images, "
        f"{len(classes)} classes")
    if args.protocol == "saspa":
        unmatched = int((source_index(real, synthetic) < 0).sum())
        if unmatched:
            say(f"  {unmatched} synthetic image(s) without a matching real source: used as variants of their class")
    for s in (real, synthetic, test):
        for f in s.failed:
            say(f"  skipped unreadable image: {f}")
    summary = compare(real, synthetic, test, classes, architecture=args.architecture, size=args.size, steps=steps,
                      epochs=args.epochs, seeds=seeds, batch_size=args.batch_size, lr=args.lr, protocol=args.protocol,
                      alpha=args.alpha, label_weights=args.label_weights, synthetic_share=args.synthetic_share,
                      device=str(device), progress=lambda s, a, acc: say(f"  seed {s} {a:15s} accuracy {acc:.3f}"))
    report = {"classes": classes, "architecture": args.architecture, "size": args.size, "steps": steps,
              "epochs": args.epochs, "protocol": args.protocol,
              "alpha": args.alpha if args.protocol == "saspa" else None,
              "label_weights": args.label_weights, "seeds": seeds, "n_real": len(real.labels),
              "n_synthetic": len(synthetic.labels), "n_test": len(test.labels), "synthetic_share": args.synthetic_share,
              **summary}
    r, a, d = summary["real"], summary["real+synthetic"], summary["paired"]
    ci = f", paired 95 % CI [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d["ci95"] else ""
    say(f"  real only        : {r['mean']:.3f} ± {r['std']:.3f}")
    say(f"  real + synthetic : {a['mean']:.3f} ± {a['std']:.3f}   ({summary['delta']:+.3f}{ci})")
    if args.report:
        atomic_write_bytes(Path(args.report), (json.dumps(report, indent=1) + "\n").encode())
        say(f"  report: {args.report}")
    print(json.dumps({"real": r["mean"], "real+synthetic": a["mean"], "delta": summary["delta"]}))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="held-out accuracy of a classifier trained on real vs real + synthetic",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", required=True, help="ImageFolder of the real training images (the augment input)")
    p.add_argument("--synthetic", required=True, help="`higfa augment` --out folder, or an ImageFolder")
    p.add_argument("--test", required=True, help="held-out ImageFolder (same class folder names)")
    p.add_argument("--protocol", default="saspa", choices=("saspa", "concat"),
                   help="saspa: replace real images by their variants with probability --alpha (default); "
                   "concat: train on the union")
    p.add_argument("--alpha", type=float, default=0.4, help="saspa: replacement probability per draw (default 0.4)")
    p.add_argument("--label-weights", action="store_true", help="weigh each synthetic image by its manifest confidence")
    p.add_argument("--architecture", default="resnet18", help="timm model name (trained from scratch)")
    p.add_argument("--size", type=int, default=64, help="training/test image size in pixels (default 64)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimisation steps per run (default 500)")
    length.add_argument("--epochs", type=int, help="epochs over the real set's size, the same for every arm")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seeds", type=int, default=3, help="runs per arm (seeds 0..n-1, paired across arms)")
    p.add_argument("--synthetic-share", type=float, help="concat: fraction of each batch from synthetic images "
                   "(default: uniform over real + synthetic)")
    p.add_argument("--include-below-threshold", action="store_true", help="also train on images the filter marked")
    p.add_argument("--report", help="write the full JSON report here")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=run)
