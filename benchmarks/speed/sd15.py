"""What HiGFA costs at Stable Diffusion 1.5 size: one step of each kind, then the whole-run ratio.

    python -m benchmarks.speed.sd15 [--rounds 3] [--threads 1]            # CPU, fp32 (part of `make bench`)
    python -m benchmarks.speed.sd15 --device cuda --dtype fp16            # the step costs on CUDA

Models are random-init at the real sizes, built from the configs in benchmarks/configs/sd15/ (no download):
UNet 860 M, ControlNet 361 M, VAE (decoder 50 M), TAESD (diffusers AutoencoderTiny), timm resnet50 (200 classes,
input 224). 512 px, batch 1, 77 text tokens. Weights are random, so only times and memory mean anything.

Kinds, timed interleaved (every round times each kind once, in turn), median of `--rounds`:
  plain        ControlNet + UNet on cond + uncond, CFG combine (the `contour` baseline's step)
  stage1       HiGFA's stage-1 step: Guide.plan + the same model call + Guide.refine (no classifier)
  guide_full   HiGFA's stage-2 guidance part with the full VAE: decode + resnet50 forward + backward to x̂0
  guide_tiny   the same with the TAESD decoder on the classifier path
  gated_full   a gated stage-2 guidance part (p ≥ τ_skip): decode + classifier forward only, full VAE
  gated_tiny   the same with TAESD
A stage-2 step is the stage-1 step (same branches; the ControlNet still runs, at 0.3) plus a guidance part, so
its time is stage1 + guide_* (timing the model call once per round instead of five times keeps this run short).
Whole run (30 DDIM steps, π_c = 0.7; the stage of each step from `higfa.sigmas` on SD's noise table):
  higfa = n1·stage1 + n2·(stage1 + guide) + one gated part (the first stage-2 measurement), plain = 30·plain.
Peak memory: each kind once in a fresh process (`--probe KIND`), RSS sampled every 5 ms during the operation
(CUDA: max allocated), minus the RSS right before it; the models' own weights are listed separately.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from higfa.backends.denoiser import DiffusersDenoiser, vae_decode
from higfa.classifier import build_classifier
from higfa.guidance import cfg_combine
from higfa.guide import Guide
from higfa.schedule import Schedule
from higfa.sigmas import NoiseSchedule

from .parts import OUTPUTS, ROOT, write_part

CONFIGS = ROOT / "benchmarks" / "configs" / "sd15"
# Activation checkpointing of the full decoder's backward (`vae_decode(checkpoint=True)`), where this version has it.
CHECKPOINTING = "checkpoint" in inspect.signature(vae_decode).parameters
KINDS = ("plain", "stage1", "guide_full", "guide_tiny", "gated_full", "gated_tiny") + (
    ("guide_full_ckpt",) if CHECKPOINTING else ())
STEPS, STAGE_BOUNDARY = 30, 0.7


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIGS / f"{name}.json").read_text()).items() if not k.startswith("_")}


def _latent_size() -> tuple[int, int, int]:
    """(latent channels, latent side, text width) of the configs: (4, 64, 768) for SD 1.5 at 512 px."""
    unet = _config("unet")
    return int(unet["in_channels"]), int(unet["sample_size"]), int(unet["cross_attention_dim"])


def build(parts: set[str], device: str, dtype: torch.dtype) -> dict:
    """Random-init SD-1.5-size models (only `parts`), eval, no grad, on `device` in `dtype`."""
    from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    classes = {"unet": UNet2DConditionModel, "controlnet": ControlNetModel, "vae": AutoencoderKL,
               "taesd": AutoencoderTiny}
    models = {}
    for name in sorted(parts & set(classes)):
        models[name] = classes[name].from_config(_config(name)).to(device, dtype).eval().requires_grad_(False)
    if "classifier" in parts:  # the classifier path stays fp32: its input is the decoder's float image
        models["classifier"] = build_classifier("resnet50", [f"class {i}" for i in range(200)], 224).to(
            device).eval().requires_grad_(False)
    return models


class Bench:
    """Inputs and one callable per kind, on models from `build`."""

    def __init__(self, models: dict, device: str, dtype: torch.dtype):
        self.m, self.device = models, device
        gen = torch.Generator().manual_seed(1)
        c, h, text = _latent_size()
        self.ns = NoiseSchedule.scaled_linear()
        self.sigmas = self.ns.sample_sigmas(STEPS, "ddim")
        self.schedule = Schedule.from_preset("higfa", stage_boundary=STAGE_BOUNDARY)
        stages = [self.schedule.stage(self.ns.sigma_to_percent(float(s))) for s in self.sigmas[:-1]]
        self.n1, self.n2 = stages.count(1), stages.count(2)
        self.i1, self.i2 = stages.index(1), stages.index(2)  # first step of each stage
        self.x = torch.randn(1, c, h, h, generator=gen).to(device) * float(self.sigmas[self.i1])
        self.x0 = (torch.randn(1, c, h, h, generator=gen) * 0.8).to(device)  # an x̂0 for the guidance parts
        if "unet" in models:
            emb = {b: torch.randn(1, 77, text, generator=gen).to(device, dtype) for b in ("cond", "uncond")}
            contour = (torch.rand(1, 3, 8 * h, 8 * h, generator=gen) > 0.9).float().to(device)
            self.den = DiffusersDenoiser(models["unet"], emb, self.ns, models.get("controlnet"), contour)
        self.decoders = {k: vae_decode(models[v]) for k, v in (("full", "vae"), ("tiny", "taesd")) if v in models}
        if CHECKPOINTING and "vae" in models:  # its own copy: checkpointing is switched on per module
            self.decoders["full_ckpt"] = vae_decode(copy.deepcopy(models["vae"]), checkpoint=True)

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def plain(self):
        s = self.sigmas[self.i1].reshape(1)
        u, c = self.den(self.x, s, ("uncond", "cond"), 0.75)
        return cfg_combine(u, c, 7.5)

    def stage1(self):
        # classifier and decoder are given (the preset needs them) but stage 1 never calls them
        guide = Guide(self.schedule, self.m["classifier"], next(iter(self.decoders.values())), target=0)
        sigma = float(self.sigmas[self.i1])
        plan = guide.plan(sigma, self.ns.sigma_to_percent(sigma), self.i1)
        u, c = self.den(self.x, torch.tensor([sigma]), ("uncond", "cond"), plan.contour)
        return guide.refine(cfg_combine(u, c, plan.cfg), plan)

    def guidance(self, decoder: str, gated: bool):
        """The stage-2 classifier part of a step: Guide.plan + Guide.refine on a fixed x̂0."""
        guide = Guide(self.schedule, self.m["classifier"], self.decoders[decoder], target=0)
        if gated:  # the previous step measured p = 1 ≥ τ_skip: this step only measures
            guide.p_latest = torch.ones(1)
        sigma = float(self.sigmas[self.i2])
        plan = guide.plan(sigma, self.ns.sigma_to_percent(sigma), self.i2)
        out = guide.refine(self.x0, plan)
        assert guide.costs.decode_backward == (0 if gated else 1), "the kind did not run what it is named after"
        return out

    def run(self, kind: str):
        fns = {"plain": self.plain, "stage1": self.stage1,
               "guide_full": lambda: self.guidance("full", False), "guide_tiny": lambda: self.guidance("tiny", False),
               "gated_full": lambda: self.guidance("full", True), "gated_tiny": lambda: self.guidance("tiny", True),
               "guide_full_ckpt": lambda: self.guidance("full_ckpt", False)}
        return fns[kind]()


def parts_for(kinds) -> set[str]:
    parts = set()
    for k in kinds:
        parts |= {"unet", "controlnet"} if k in ("plain", "stage1") else {"classifier"}
        parts |= {"classifier", "taesd"} if k == "stage1" else set()
        parts |= {"vae"} if "_full" in k else {"taesd"} if k.endswith("_tiny") else set()
    return parts


def _rss() -> int:
    with open("/proc/self/statm") as f:
        import resource

        return int(f.read().split()[1]) * resource.getpagesize()


@contextlib.contextmanager
def peak_rss():
    """While the block runs, sample this process's RSS every 5 ms in a thread; yields a one-item list that holds,
    after the block, the peak RSS above the RSS on entry (bytes). The sd15 and sdxl memory probes share it."""
    base, peak, stop = _rss(), [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    out = [0]
    try:
        yield out
    finally:
        stop.set()
        t.join()
        out[0] = max(peak[0], _rss()) - base


def probe(kind: str, device: str, dtype: torch.dtype) -> dict:
    """Child process: peak extra memory (MB) of one `kind` operation over the loaded-model baseline."""
    models = build(parts_for([kind]), device, dtype)
    bench = Bench(models, device, dtype)
    weights = sum(p.numel() * p.element_size() for m in models.values() for p in m.parameters())
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        bench.run(kind)
        torch.cuda.synchronize()
        return {"peak_extra_mb": (torch.cuda.max_memory_allocated() - base) / 2**20, "weights_mb": weights / 2**20}
    with peak_rss() as extra:
        bench.run(kind)
    return {"peak_extra_mb": extra[0] / 2**20, "weights_mb": weights / 2**20}


def guide_overhead(bench: "Bench", n: int = 200) -> float:
    """Seconds per stage-1 step that HiGFA adds to the plain step (Guide, plan + refine, no classifier), measured
    alone over `n` calls: the only work the stage-1 step does beyond the plain step's model call."""
    guide = Guide(bench.schedule, bench.m["classifier"], next(iter(bench.decoders.values())), target=0)
    sigma = float(bench.sigmas[bench.i1])
    x0 = torch.zeros_like(bench.x)
    t0 = time.perf_counter()
    for i in range(n):
        guide.refine(x0, guide.plan(sigma, bench.ns.sigma_to_percent(sigma), i))
    return (time.perf_counter() - t0) / n


def whole_run(med: dict, n1: int, n2: int, decoder: str, gated_share: float) -> float:
    """HiGFA / plain for one run: n1 stage-1 steps, n2 stage-2 steps (a `gated_share` of them gated)."""
    guided = (1 - gated_share) * med[f"guide_{decoder}"] + gated_share * med[f"gated_{decoder}"]
    higfa = n1 * med["stage1"] + n2 * (med["stage1"] + guided) + med[f"gated_{decoder}"]
    return higfa / ((n1 + n2) * med["plain"])


def probes(kinds, args) -> dict:
    """Each kind's memory probe in a fresh process."""
    mem = {}
    for k in kinds:
        cmd = [sys.executable, "-m", __spec__.name, "--probe", k, "--device", args.device, "--dtype", args.dtype,
               "--threads", str(args.threads), "--configs", str(CONFIGS)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:  # -9: most often the kernel's OOM killer (the full VAE's backward needs ~6 GB)
            mem[k] = {"error": f"exit {out.returncode}" + (" (SIGKILL: out of memory?)" if out.returncode == -9
                                                           else ""), "stderr": out.stderr.strip()[-300:]}
        else:
            mem[k] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"memory {k}: {mem[k]}", flush=True)
    return mem


def measure(args) -> dict:
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    t0 = time.perf_counter()
    models = build(parts_for(KINDS), args.device, dtype)
    bench = Bench(models, args.device, dtype)
    built = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for r in range(args.rounds):
        for k in KINDS:
            bench.sync()
            t = time.perf_counter()
            bench.run(k)
            bench.sync()
            times[k].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    overhead = guide_overhead(bench)
    mem = probes(KINDS, args)
    n1, n2 = bench.n1, bench.n2
    per_round = [times["stage1"][i] / times["plain"][i] for i in range(args.rounds)]
    return {
        "configs": str(CONFIGS.relative_to(ROOT)) if CONFIGS.is_relative_to(ROOT) else str(CONFIGS),
        "device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(), "rounds": args.rounds,
        "steps": STEPS, "stage_boundary": STAGE_BOUNDARY, "stage1_steps": n1, "stage2_steps": n2,
        "build_seconds": round(built, 1), "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "per_plain_step": {k: round(v / med["plain"], 3) for k, v in med.items()},
        "stage1_ratio": round(med["stage1"] / med["plain"], 3),
        "stage1_ratio_per_round_median": round(statistics.median(per_round), 3),
        "stage1_guide_overhead_seconds": round(overhead, 6),
        "stage1_ratio_from_overhead": round(1 + overhead / med["plain"], 4),
        "ratio_full_vae": round(whole_run(med, n1, n2, "full", 0.0), 3),
        "ratio_guidance_decoder": round(whole_run(med, n1, n2, "tiny", 0.0), 3),
        "ratio_full_vae_half_gated": round(whole_run(med, n1, n2, "full", 0.5), 3),
        "ratio_guidance_decoder_half_gated": round(whole_run(med, n1, n2, "tiny", 0.5), 3),
        "ratio_full_vae_all_gated": round(whole_run(med, n1, n2, "full", 1.0), 3),
        **({"ratio_full_vae_checkpointed": round(whole_run({**med, "guide_full": med["guide_full_ckpt"]}, n1, n2,
                                                           "full", 0.0), 3)} if CHECKPOINTING else {}),
        "activation_checkpointing": CHECKPOINTING,
        "peak_memory_mb": {k: round(v["peak_extra_mb"], 1) if "peak_extra_mb" in v else v for k, v in mem.items()},
        "weights_mb": {k: round(v.get("weights_mb", 0.0), 1) for k, v in mem.items()},
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                    "timm": __import__("timm").__version__},
    }


def main(argv=None) -> int:
    global CONFIGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the column to trust on a shared "
                                                          "machine)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"))
    p.add_argument("--out", type=Path, default=OUTPUTS / "speed_sd15.json")
    p.add_argument("--configs", type=Path, default=CONFIGS, help="model configs (tests use smaller ones)")
    p.add_argument("--probe", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--reprobe", nargs="+", choices=KINDS, help="only redo these memory probes in --out")
    p.add_argument("--add-overhead", action="store_true", help="only measure the stage-1 Guide overhead and add "
                                                                 "it to the result in --out")
    args = p.parse_args(argv)
    CONFIGS = args.configs.resolve()
    torch.set_num_threads(args.threads)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    if args.probe:
        print(json.dumps(probe(args.probe, args.device, dtype)))
        return 0
    if args.reprobe:  # redo some memory probes (e.g. one the OOM killer stopped) in an existing result
        result = json.loads(args.out.read_text())
        for k, v in probes(args.reprobe, args).items():
            result["peak_memory_mb"][k] = round(v["peak_extra_mb"], 1) if "peak_extra_mb" in v else v
            result["weights_mb"][k] = round(v.get("weights_mb", 0.0), 1)
        args.out.write_text(json.dumps(result, indent=1))
        return 0
    if args.add_overhead:  # a result measured before the overhead was part of it: add it (no UNet needed)
        result = json.loads(args.out.read_text())
        overhead = guide_overhead(Bench(build({"classifier", "taesd"}, args.device, dtype), args.device, dtype))
        result["stage1_guide_overhead_seconds"] = round(overhead, 6)
        result["stage1_ratio_from_overhead"] = round(1 + overhead / result["median_seconds"]["plain"], 4)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"stage-1 overhead {overhead * 1e3:.2f} ms per step -> {args.out}")
        return 0
    result = measure(args)
    return write_part(args.out, result, shown={k: v for k, v in result.items() if "ratio" in k})


if __name__ == "__main__":
    raise SystemExit(main())
