"""Speed and memory of the core sampler: HiGFA vs plain CFG + contour on tiny stand-ins.

    python -m benchmarks.speed.tiny [--steps 30] [--stage-boundary 0.7] [--repeats 5]

Both configurations run side by side in one process (interleaved, same seed, same steps); the
median wall time of `--repeats` runs is compared. Peak memory is measured per configuration in a
fresh subprocess (CPU: peak RSS above the loaded-model baseline; CUDA: max allocated). `make bench`'s part
"tiny"; writes outputs/bench/core_speed.json. Design goal: HiGFA ≤ 1.25× the time of plain CFG + contour, stage 1
at parity.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from higfa.guide import Guide
from higfa.sampler import sample
from higfa.schedule import Schedule
from higfa.testing.stand_ins import TinyStack

from .parts import ROOT

GOAL = 1.25


def build(args):
    world = TinyStack(seed=0, latent_size=args.latent_size, num_classes=8)
    sigmas = world.noise_schedule.sample_sigmas(args.steps)
    configs = {
        "contour": lambda: Guide(Schedule.from_preset("contour")),
        "higfa": lambda: Guide(Schedule(stage_boundary=args.stage_boundary), world.classifier, world.decode,
                               target=3),
        # the same, with a classifier already sure of the target: shows what gating saves
        "higfa-confident": lambda: Guide(Schedule(stage_boundary=args.stage_boundary), Sure(world.classifier, 3),
                                         world.decode, target=3),
    }
    return world, sigmas, configs


class Sure(torch.nn.Module):
    """Adds a large logit to class k: p(k) ≈ 1, so every stage-2 step is gated."""

    def __init__(self, inner, k):
        super().__init__()
        self.inner, self.k = inner, k

    def forward(self, image):
        logits = self.inner(image)
        return logits + 30.0 * torch.nn.functional.one_hot(torch.tensor(self.k), logits.shape[1])


def run_once(world, sigmas, guide, args):
    t0 = time.perf_counter()
    out = sample(world.denoiser, world.noise(args.batch, seed=42), sigmas, guide)
    return time.perf_counter() - t0, out


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_probe(args) -> None:
    """Child process: peak extra memory of one sampling run of `args.probe`."""
    world, sigmas, configs = build(args)
    guide = configs[args.probe]()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    run_once(world, sigmas, guide, args)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_extra_bytes": max(peak - base, 0), "device": "cuda" if cuda else "cpu"}))


def time_configs(args, world, sigmas, configs) -> tuple[dict, dict]:
    """Median wall time of each configuration's whole run (interleaved, after one warm-up run each), and its last
    sampler result."""
    times = {k: [] for k in configs}
    results = {}
    for make in configs.values():  # warm-up
        run_once(world, sigmas, make(), args)
    for _ in range(args.repeats):
        for k, make in configs.items():
            dt, results[k] = run_once(world, sigmas, make(), args)
            times[k].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}, results


def memory(args) -> dict:
    """Each of contour and higfa's peak extra memory, measured in a fresh process (`--probe`)."""
    mem = {}
    for k in ("contour", "higfa"):
        cmd = [sys.executable, "-m", __spec__.name, "--probe", k, "--steps", str(args.steps), "--batch",
               str(args.batch), "--latent-size", str(args.latent_size), "--stage-boundary", str(args.stage_boundary)]
        probe = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        mem[k] = json.loads(probe.stdout.strip().splitlines()[-1])
    return mem


def per_stage(out, stage: int) -> float:
    """Mean seconds of a sampler result's steps of one stage (0 when it has none)."""
    rows = [r.seconds for r in out.trace.steps if r.stage == stage]
    return (sum(rows) / len(rows)) if rows else 0.0


def summarize(args, med: dict, results: dict, mem: dict) -> dict:
    """The part's output: time and memory ratios, per-stage step times, HiGFA's costs, the confident classifier."""
    h, c, g = results["higfa"], results["contour"], results["higfa-confident"]
    ratio = med["higfa"] / med["contour"]
    return {
        "steps": args.steps, "stage_boundary": args.stage_boundary, "batch": args.batch,
        "latent": [4, args.latent_size, args.latent_size], "image": 8 * args.latent_size, "repeats": args.repeats,
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
        "median_seconds": med, "time_ratio": ratio, "goal": GOAL, "meets_goal": ratio <= GOAL,
        "stage1_step_seconds": {"contour": per_stage(c, 1), "higfa": per_stage(h, 1)},
        "stage2_step_seconds": {"contour": per_stage(c, 2), "higfa": per_stage(h, 2)},
        "stage_steps": {"stage1": sum(1 for r in h.trace.steps if r.stage == 1),
                        "stage2": sum(1 for r in h.trace.steps if r.stage == 2),
                        "gated_stage2": sum(1 for r in h.trace.steps if r.stage == 2 and all(r.gated))},
        "denoiser_calls": {"contour": c.denoiser_calls, "higfa": h.denoiser_calls},
        "higfa_costs": h.costs.as_dict(), "memory": mem,
        "memory_ratio": mem["higfa"]["peak_extra_bytes"] / max(mem["contour"]["peak_extra_bytes"], 1),
        "confident_classifier": {"time_ratio": med["higfa-confident"] / med["contour"],
                                 "classifier_backward": g.costs.classifier_backward,
                                 "classifier_forward": g.costs.classifier_forward}}


def print_summary(args, report: dict, results: dict) -> None:
    h, c, g = results["higfa"], results["contour"], results["higfa-confident"]
    med, mem, cs, s1 = report["median_seconds"], report["memory"], h.costs, report["stage1_step_seconds"]
    n1, n2, gated = (report["stage_steps"][k] for k in ("stage1", "stage2", "gated_stage2"))
    print(f"core sampler, {args.steps} steps, π_c = {args.stage_boundary}, tiny stand-ins "
          f"(latent 4x{args.latent_size}x{args.latent_size}, image {8 * args.latent_size}px, batch {args.batch}), "
          f"{report['device']}, median of {args.repeats}")
    print(f"{'':28}{'contour (CFG+contour)':>24}{'higfa':>12}")
    print(f"{'wall time / run (s)':28}{med['contour']:>24.3f}{med['higfa']:>12.3f}")
    print(f"{'stage-1 time / step (ms)':28}{1e3 * s1['contour']:>24.2f}{1e3 * s1['higfa']:>12.2f}")
    print(f"{'stage-2 time / step (ms)':28}{1e3 * report['stage2_step_seconds']['contour']:>24.2f}"
          f"{1e3 * report['stage2_step_seconds']['higfa']:>12.2f}")
    print(f"{'denoiser calls':28}{c.denoiser_calls:>24}{h.denoiser_calls:>12}")
    print(f"{'peak extra memory (MiB)':28}{mem['contour']['peak_extra_bytes'] / 2**20:>24.1f}"
          f"{mem['higfa']['peak_extra_bytes'] / 2**20:>12.1f}")
    print(f"higfa cost breakdown: {n1} stage-1 steps, {n2} stage-2 steps ({gated} fully gated); "
          f"decoder fwd {cs.decode_forward} ({cs.seconds['decode_forward']:.3f}s) bwd {cs.decode_backward} "
          f"({cs.seconds['decode_backward']:.3f}s); classifier fwd {cs.classifier_forward} "
          f"({cs.seconds['classifier_forward']:.3f}s) bwd {cs.classifier_backward} "
          f"({cs.seconds['classifier_backward']:.3f}s)")
    print(f"with a classifier already sure of the target (p ≈ 1): {g.costs.classifier_backward} backward passes, "
          f"{g.costs.classifier_forward} no-grad forwards, "
          f"time ratio {report['confident_classifier']['time_ratio']:.3f}x")
    ratio = report["time_ratio"]
    print(f"time ratio higfa / contour = {ratio:.3f}x (goal <= {GOAL}x: {'met' if ratio <= GOAL else 'NOT met'}); "
          f"stage-1 step ratio = {s1['higfa'] / max(s1['contour'], 1e-9):.3f}x; "
          f"memory ratio = {report['memory_ratio']:.2f}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--stage-boundary", type=float, default=0.7)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--latent-size", type=int, default=8, help="latent side (images are 8x larger)")
    p.add_argument("--out", default="outputs/bench/core_speed.json")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        memory_probe(args)
        return 0
    world, sigmas, configs = build(args)
    med, results = time_configs(args, world, sigmas, configs)
    report = summarize(args, med, results, memory(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print_summary(args, report, results)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
