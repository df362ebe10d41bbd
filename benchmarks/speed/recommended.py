"""At Stable Diffusion 1.5 size: the configuration the project recommends ÷ plain sampling.

    python -m benchmarks.speed.recommended [--rounds 2] [--threads 1]

The recommended configuration: preset `higfa-judged` (8 random views of the decoded x̂0, crop 0.4, noise 0.05,
w_cls 4, the confidence modulating and gating from p 0.8), a judge (a second classifier that did not guide:
`Guide(judge=...)`, what `higfa augment --judge PATH` passes; here a second random-init resnet50, 200 classes,
224 px, seeing its own 8 views) and TAESD on the classifier path (`--guidance-vae`). The models are the SD-1.5
part's (benchmarks/speed/sd15.py: random-init, real sizes, fp32, 512 px, batch 1).
Kinds, timed interleaved (every round times each kind once, in turn), median of `--rounds`:
  plain        ControlNet + UNet on cond + uncond, CFG combine (sd15's `plain`: the `contour` baseline's step)
  stage1       HiGFA's stage-1 step (sd15's `stage1`)
  guide_rec    the recommended stage-2 guidance part: TAESD decode, the guide's 8 views forward + backward, the
               judge's 8 views forward (Guide.plan + Guide.refine on a fixed x̂0)
  gated_rec    the same on a step the judge gated (its p ≥ 0.8): decode, the guide's and the judge's forwards
  guide_tiny   the `higfa` preset's part with TAESD (one view, no judge), sd15's `guide_tiny`, for comparison
Whole run (30 DDIM steps, π_c = 0.7: 20 stage-1, 10 stage-2 steps), `sd15.whole_run`: no stage-2 step gated, all
gated, and the share the judge probe measured for `higfa-judged` on the built-in world (23.5 %; at SD size with
real models the share is not measured).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from higfa.classifier import build_classifier
from higfa.guide import Guide
from higfa.schedule import Schedule

from . import sd15
from .parts import OUTPUTS, ROOT, write_part

KINDS = ("plain", "stage1", "guide_rec", "gated_rec", "guide_tiny")
RESULTS = ROOT / "benchmarks" / "results" / "speed.json"
PRESET = "higfa-judged"
PROBE_GATED_SHARE = 0.235  # docs/quality.md "Judge probe": higfa-judged's gated share of stage-2 sample-steps


class Recommended:
    """sd15's Bench plus the recommended configuration's guidance parts."""

    def __init__(self, configs: Path | None = None, guidance_only: bool = False):
        if configs is not None:
            sd15.CONFIGS = configs
        kinds = ("guide_tiny",) if guidance_only else ("plain", "stage1", "guide_tiny")
        models = sd15.build(sd15.parts_for(kinds), "cpu", torch.float32)
        self.bench = sd15.Bench(models, "cpu", torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            clf = models["classifier"]
            self.judge = build_classifier(clf.architecture, clf.class_names, clf.input_size).eval()
        self.judge.requires_grad_(False)
        self.schedule = Schedule.from_preset(PRESET, stage_boundary=sd15.STAGE_BOUNDARY)

    def recommended(self, gated: bool) -> torch.Tensor:
        b = self.bench
        guide = Guide(self.schedule, b.m["classifier"], b.decoders["tiny"], target=0, judge=self.judge,
                      judge_target=0, judge_name="judge")
        if gated:  # the judge measured p = 1 ≥ τ_skip on the previous step: this step only measures
            guide.p_latest = torch.ones(1)
        sigma = float(b.sigmas[b.i2])
        out = guide.refine(b.x0, guide.plan(sigma, b.ns.sigma_to_percent(sigma), b.i2))
        assert guide.costs.decode_backward == (0 if gated else 1) and guide.judge_costs.classifier_forward >= 1, (
            "the kind did not run what it is named after")
        return out

    def run(self, kind: str) -> torch.Tensor:
        if kind in ("guide_rec", "gated_rec"):
            return self.recommended(kind == "gated_rec")
        return self.bench.run(kind)


def ratios(med: dict, n1: int, n2: int) -> dict:
    """Whole-run ratios of the recommended configuration (and higfa with TAESD) over plain sampling."""
    rec = {**med, "guide_rec": med["guide_rec"], "gated_rec": med["gated_rec"]}
    return {"ratio": round(sd15.whole_run(rec, n1, n2, "rec", 0.0), 3),
            "ratio_all_gated": round(sd15.whole_run(rec, n1, n2, "rec", 1.0), 3),
            "ratio_probe_gated_share": round(sd15.whole_run(rec, n1, n2, "rec", PROBE_GATED_SHARE), 3),
            "ratio_higfa_taesd": round((n1 * med["stage1"] + n2 * (med["stage1"] + med["guide_tiny"]))
                                       / ((n1 + n2) * med["plain"]), 3)}


def with_reference(med: dict, reference: dict) -> tuple[dict, dict]:
    """`med` (this run's guidance kinds, CPU s) + the reference's plain step scaled by this run's `guide_tiny`
    over the reference's, and the stage-1 step = that plain step + the Guide's stage-1 work the reference timed
    alone (the reference's own stage-1 median, 0.98 of its plain one, is noise: the same model call); and what
    to record about it."""
    ref = reference["median_seconds"]
    scale = med["guide_tiny"] / ref["guide_tiny"]
    plain = ref["plain"] * scale
    return med | {"plain": plain, "stage1": plain + reference.get("stage1_guide_overhead_seconds", 0.0)}, {
        "clock": "CPU seconds; plain from the reference (speed.json sd15) scaled, stage1 = plain + Guide overhead",
        "reference": {k: ref[k] for k in ("plain", "guide_tiny")}, "reference_scale": round(scale, 3)}


def measure(rounds: int, configs: Path | None = None, reference: dict | None = None) -> dict:
    """Every kind interleaved; with `reference` (speed.json's sd15 section) only the guidance kinds, and the plain
    and stage-1 steps are the reference's, scaled by this run's CPU time of sd15's `guide_tiny` over the
    reference's (the same operation then and now: how much slower this run's clock is)."""
    t0 = time.perf_counter()
    r = Recommended(configs, guidance_only=reference is not None)
    built = time.perf_counter() - t0
    kinds = KINDS if reference is None else KINDS[2:]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    loads = []
    for i in range(rounds):
        for k in kinds:
            t, c = time.perf_counter(), time.process_time()
            assert torch.isfinite(r.run(k)).all(), k
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
        loads.append(round(os.getloadavg()[0], 2))
        print(f"round {i + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s (CPU {cpu[k][-1]:.2f}s)"
                                                    for k, v in times.items()) + f", load {loads[-1]}", flush=True)
    med = {k: statistics.median(v) for k, v in (times if reference is None else cpu).items()}
    med, extra = (med, {}) if reference is None else with_reference(med, reference)
    n1, n2 = r.bench.n1, r.bench.n2
    return {"preset": PRESET, "views": r.schedule.views, "tau_skip": r.schedule.tau_skip, "judge": "resnet50",
            "guidance_decoder": "TAESD (AutoencoderTiny)", "size": 512, "device": "cpu", "dtype": "fp32",
            "threads": torch.get_num_threads(), "rounds": rounds, "steps": sd15.STEPS, "stage1_steps": n1,
            "stage2_steps": n2, "probe_gated_share": PROBE_GATED_SHARE, "build_seconds": round(built, 1),
            "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
            "median_seconds": {k: round(v, 3) for k, v in med.items()},
            "per_plain_step": {k: round(v / med["plain"], 3) for k, v in med.items()},
            "load_average_1min": loads, **extra, **ratios(med, n1, n2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUTPUTS / "speed_recommended.json")
    p.add_argument("--configs", type=Path, default=None, help="model configs (tests use smaller ones)")
    p.add_argument("--guidance-only", action="store_true", help="time only the guidance kinds (no UNet: 0.5 GB "
                   "instead of 5 GB); plain and stage-1 steps from speed.json's sd15 section, scaled by guide_tiny")
    p.add_argument("--recompute", action="store_true", help="only redo the arithmetic of a --guidance-only result "
                                                             "in --out (its CPU seconds) against speed.json's sd15")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    reference = json.loads(RESULTS.read_text())["sd15"] if args.guidance_only or args.recompute else None
    if args.recompute:
        result = json.loads(args.out.read_text())
        med = {k: statistics.median(v) for k, v in result["cpu_seconds"].items()}
        med, extra = with_reference(med, reference)
        result |= {"median_seconds": {k: round(v, 3) for k, v in med.items()},
                   "per_plain_step": {k: round(v / med["plain"], 3) for k, v in med.items()}, **extra,
                   **ratios(med, result["stage1_steps"], result["stage2_steps"])}
        return write_part(args.out, result, shown={k: v for k, v in result.items() if "ratio" in k})
    result = measure(args.rounds, args.configs, reference)
    return write_part(args.out, result, shown={k: v for k, v in result.items() if "ratio" in k})


if __name__ == "__main__":
    raise SystemExit(main())
