"""`python -m benchmarks.quality.paired_fidelity --world W A B [C ...]`: the world oracle's species accuracy of arm A's
cached images minus arm B's (and C's...), paired image by image, with a percentile-bootstrap 95 % CI over images.

The quality bench generates every arm from the same per-item noise and contour seeds (benchmarks/seeds.py), so image i
of two arms' caches (outputs/bench_quality[_W]/<arm>.npz) share their source, seed and target: the difference per image
is the arms' own. quality.json gives each arm's accuracy alone; this gives the comparison's uncertainty, which the
quality bench's table does not (docs/quality.md quotes it where an arm is compared with another on fidelity).
Reads only the caches and the world's shipped oracle; scores arms the oracle did not guide (a `guide=oracle` arm's
verdict would be the oracle's own).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from higfa.world.catalog import DEFAULT, WORLDS, assets

from ..judge_probe import paired_difference
from .arms import cache_folder


def oracle_right(images: np.ndarray, targets: np.ndarray, oracle) -> np.ndarray:
    """[N] bool: the oracle's top-1 species is the target. images [N,H,W,3] uint8."""
    from higfa.training import predict

    return predict(oracle, images).argmax(1).numpy() == targets


def compare(folder: Path, arms: list[str], oracle, resamples: int = 10_000) -> dict:
    """{"A - B": paired_difference} for every other arm B against the first, A; refuses caches that are not paired
    (other targets or sources per image)."""
    caches = {}
    for arm in arms:
        path = folder / f"{arm}.npz"
        if not path.is_file():
            raise SystemExit(f"{arm}: no cached images at {path}; run the quality bench with this arm first "
                             "(`python -m benchmarks.quality --extra ... --no-downstream`)")
        caches[arm] = np.load(path)
    first = caches[arms[0]]
    for arm in arms[1:]:
        c = caches[arm]
        if not (np.array_equal(c["targets"], first["targets"]) and np.array_equal(c["source"], first["source"])):
            raise SystemExit(f"{arm} and {arms[0]}: their caches hold other sources or targets per image (another "
                             "--shots, --per-source or --fidelity-shots); compare arms of one bench run")
    right = {arm: oracle_right(c["images"], c["targets"], oracle) for arm, c in caches.items()}
    return {f"{arms[0]} - {arm}": paired_difference(right[arms[0]], right[arm], resamples) for arm in arms[1:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("arms", nargs="+", help="cached arms: the first minus each of the others")
    p.add_argument("--world", default=DEFAULT, choices=sorted(WORLDS))
    p.add_argument("--out", type=Path, default=None, help="the bench's cache folder (default: the world's)")
    args = p.parse_args(argv)
    if len(args.arms) < 2:
        p.error("name two arms or more: the first is compared with each of the others")
    import torch

    from higfa.classifier import load_classifier

    torch.set_num_threads(1)
    oracle = load_classifier(assets(args.world) / "oracle.safetensors").float().eval()
    print(json.dumps(compare(args.out or cache_folder(args.world), args.arms, oracle), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
