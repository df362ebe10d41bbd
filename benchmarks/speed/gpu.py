"""`make bench-gpu`: the SD-1.5-size measurement on CUDA in fp16, as whole sampling runs.

    python -m benchmarks.speed.gpu [--steps 30] [--repeats 3]

The same random-init models as benchmarks/speed/sd15.py (configs in benchmarks/configs/sd15/; UNet, ControlNet,
VAE and TAESD in fp16, the resnet50 classifier in fp32), 512 px, batch 1. Whole runs of the reference sampler
(`higfa.sampler.sample`, 30 DDIM-spaced steps, π_c = 0.7) for cfg, contour, higfa with the full VAE on the
classifier path and higfa with TAESD; interleaved, median of `--repeats`, after one warm-up run each. Reports
iterations/s (steps per second) and the peak allocated CUDA memory of each run, and writes
outputs/bench/speed_gpu.json (`python -m benchmarks.speed --collect` folds it into benchmarks/results/speed.json).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from higfa.guide import Guide
from higfa.sampler import sample
from higfa.schedule import Schedule

from .parts import OUTPUTS, write_part
from .sd15 import KINDS, Bench, build, parts_for

CONFIGS = ("cfg", "contour", "higfa_full_vae", "higfa_taesd")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=OUTPUTS / "speed_gpu.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("make bench-gpu needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "`make bench` measures the CPU")
    models = build(parts_for(KINDS), "cuda", torch.float16)
    bench = Bench(models, "cuda", torch.float16)
    sigmas = bench.ns.sample_sigmas(args.steps, "ddim")
    noise = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0)).cuda()

    def guide(name: str):
        if name in ("cfg", "contour"):
            return Guide(Schedule.from_preset(name))
        decode = bench.decoders["full" if name == "higfa_full_vae" else "tiny"]
        return Guide(Schedule.from_preset("higfa"), models["classifier"], decode, target=0,
                     decoder_name=name.split("_", 1)[1])

    def run(name: str) -> tuple[float, float]:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        sample(bench.den, noise, sigmas, guide(name))
        torch.cuda.synchronize()
        return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - base) / 2**20

    for name in CONFIGS:  # warm-up (cuDNN autotuning, allocator)
        run(name)
    secs: dict[str, list[float]] = {k: [] for k in CONFIGS}
    peak: dict[str, float] = {}
    for _ in range(args.repeats):
        for name in CONFIGS:
            s, m = run(name)
            secs[name].append(s)
            peak[name] = max(peak.get(name, 0.0), m)
    med = {k: statistics.median(v) for k, v in secs.items()}
    result = {"device": torch.cuda.get_device_name(), "dtype": "fp16", "steps": args.steps, "repeats": args.repeats,
              "its_per_s": {k: round(args.steps / v, 3) for k, v in med.items()},
              "ratio_vs_contour": {k: round(v / med["contour"], 3) for k, v in med.items()},
              "peak_allocated_extra_mb": {k: round(v, 1) for k, v in peak.items()},
              "weights_mb": round(sum(p.numel() * p.element_size() for m in models.values() for p in m.parameters())
                                  / 2**20, 1),
              "torch": torch.__version__}
    return write_part(args.out, result)


if __name__ == "__main__":
    raise SystemExit(main())
