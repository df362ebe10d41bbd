"""Scale-out of `higfa augment` on the built-in world: torchrun with 2 processes vs one process, 1 thread each.

    python -m benchmarks.speed.torchrun [--per-species 2] [--steps 30]

Writes the world's few-shot images (`--per-species` per species) as an ImageFolder, then runs the same
`higfa augment --model builtin` job once as one process (`--threads 1`) and once under
`torchrun --standalone --nproc-per-node 2` (gloo, OMP_NUM_THREADS=1, so 1 thread per process), each into its own
folder; images/s is images written / wall time of the whole command (start-up and model loading included). It
checks that both runs wrote the same PNG bytes. On a shared machine two processes may get more or less than two
cores' worth of time: the result says what was measured, nothing more.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .parts import OUTPUTS, ROOT, write_part


def write_folder(root: Path, per_species: int) -> int:
    import cv2

    from higfa.world.birds import TinyBirds

    world = TinyBirds(seed=0)
    data = world.split("fewshot", per_species)
    for i, (img, label) in enumerate(zip(data.images, data.labels)):
        folder = root / world.class_names[int(label)].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return len(data)


def digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "images").rglob("*.png"))}


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def measure(args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="higfa-torchrun-") as tmp:
        tmp = Path(tmp)
        n = write_folder(tmp / "data", args.per_species)
        job = ["augment", "--data", str(tmp / "data"), "--model", "builtin", "--variants", "1", "--steps",
               str(args.steps), "--threads", "1", "--quiet"]
        one = [sys.executable, "-m", "higfa.jobs.cli", *job, "--out", str(tmp / "one")]
        two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "higfa.jobs.cli", *job, "--out", str(tmp / "two")]
        t_one, t_two = [], []
        for r in range(args.rounds):  # interleaved; later rounds resume nothing (fresh folders)
            for name in ("one", "two"):
                subprocess.run(["rm", "-rf", str(tmp / name)], check=True)
            t_one.append(timed(one, env))
            t_two.append(timed(two, env))
            print(f"round {r + 1}: 1 process {t_one[-1]:.1f}s, torchrun x2 {t_two[-1]:.1f}s", flush=True)
        same = digests(tmp / "one") == digests(tmp / "two") and len(digests(tmp / "one")) == n
    import statistics

    a, b = statistics.median(t_one), statistics.median(t_two)
    return {"images": n, "steps": args.steps, "rounds": args.rounds,
            "seconds_one_process": [round(x, 1) for x in t_one],
            "seconds_torchrun_2": [round(x, 1) for x in t_two], "images_per_s_one": round(n / a, 3),
            "images_per_s_torchrun_2": round(n / b, 3), "speedup_2x1": round(a / b, 3), "same_bytes": same,
            "goal": 1.8}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-species", type=int, default=6,
                   help="few-shot images per species (16 species; 6: the 96 images of docs/speed.md; with fewer, "
                   "start-up dominates: 32 images gave 1.53x)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUTPUTS / "speed_torchrun.json")
    args = p.parse_args(argv)
    result = measure(args)
    return write_part(args.out, result)


if __name__ == "__main__":
    raise SystemExit(main())
