"""What HiGFA costs at SDXL size on the CPU: the step kinds of the SD-1.5 part (benchmarks/speed/sd15.py) on
random-init SDXL-size models, and the whole-run ratios they compose.

    python -m benchmarks.speed.sdxl [--size 1024] [--rounds 2] [--threads 1]

Models, built from the published configs written out below (no download; weights random, so only time and
memory mean anything): SDXL base 1.0's UNet (2.57 B parameters), diffusers' SDXL Canny ControlNet (1.25 B), the
SDXL VAE (AutoencoderKL, scaling factor 0.13025), taesdxl (AutoencoderTiny) and a timm resnet50 (200 classes,
224 px) as the classifier. fp32, batch 1, `--size` px (latent size/8).
  - Text: random tensors of the shapes SDXL's two text encoders give (tokens [1, 77, 2048], pooled [1, 1280]) and
    `sdxl_time_ids(size)`: `higfa augment` encodes a prompt once, not per step, so the encoders are not timed.
  - The ControlNet's copy of the UNet encoder (conv_in, time/added embeddings, down blocks, mid block: what
    `ControlNetModel.from_unet` copies) shares the UNet's weight tensors instead of holding 5 GB more of random
    ones: it runs all of its own computation at its real size, and the UNet's 10.3 GB of fp32 weights plus a
    second 5 GB would not leave room on a 24 GB machine. Its own layers (hint embedding, zero convolutions) are
    its own. `weights_mb` lists what is held, `controlnet_shared_mb` what a real ControlNet adds.
Two phases, each a fresh process, alternated round by round (model, guidance, model, guidance, ...), because the
UNet's weights and the full VAE's backward at 1024 px do not fit in memory together:
  model     UNet + ControlNet (+ taesdxl, resnet50 for the guide, never called in stage 1). `sample_with_scheduler`
            (the `higfa augment` sampling loop, SDXL's added conditioning, DDIM with SDXL's β schedule) stopped
            after its first step (the highest σ: stage 1):
              plain   the `contour` preset's step: ControlNet at 0.75 + UNet on cond + uncond, CFG 7.5
              stage1  the `higfa` preset's stage-1 step (Guide.plan + the same model call + Guide.refine)
  guidance  the stage-2 guidance part, Guide.plan + Guide.refine on a fixed x̂0 [1, 4, size/8, size/8] (the core
            Guide every backend calls), as in the SD-1.5 part:
              guide_full_ckpt  the full VAE: decode + resnet50, forward + backward, with activation checkpointing
                               in the decoder (`vae_decode(checkpoint=True)`)
              guide_full       the same without checkpointing (only with `--full-vae-backward`: at 1024 px it needs
                               about 4× the 6.1 GB the same VAE needs at 512 px, more than the machine has)
              guide_tiny       taesdxl on the classifier path, forward + backward
              gated_full / gated_tiny  a gated part (p ≥ τ_skip): decode + classifier forward only
Whole run: 30 DDIM steps, π_c = 0.7 on SDXL's noise table (the same scaled-linear β as SD 1.5): 20 stage-1 and 10
stage-2 steps; higfa = n1·stage1 + n2·(stage1 + guide) + one gated part, plain = 30·plain (`sd15.whole_run`).
Times: wall seconds and the process's CPU seconds of each operation (1 thread: CPU time is the operation's own
work, less disturbed by other jobs on a shared machine); medians over rounds. Memory: resident-set peak during
each operation above the RSS right before it (sampled every 5 ms, glibc told to return freed blocks at once),
and each phase's whole peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from higfa.backends.components import sdxl_time_ids
from higfa.backends.denoiser import sample_with_scheduler, vae_decode
from higfa.classifier import build_classifier
from higfa.guide import Guide
from higfa.schedule import Schedule
from higfa.sigmas import NoiseSchedule

from .parts import OUTPUTS, ROOT, write_part
from .sd15 import peak_rss, whole_run

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the keys that differ from diffusers' defaults)
UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280],
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, norm_num_groups=32)
# diffusers/controlnet-canny-sdxl-1.0 config.json: the UNet's encoder + a hint embedding
CONTROLNET = {k: v for k, v in UNET.items() if k not in ("sample_size", "out_channels", "up_block_types")} | dict(
    conditioning_embedding_out_channels=[16, 32, 96, 256], conditioning_channels=3)
# stabilityai/sdxl-vae (and the base model's vae/) config.json
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
           block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, sample_size=1024, scaling_factor=0.13025,
           force_upcast=True)
# madebyollin/taesdxl config.json (TAESD's architecture; ComfyUI's models/vae_approx/taesdxl_*)
TAESDXL = dict(in_channels=3, out_channels=3, latent_channels=4, encoder_block_out_channels=[64, 64, 64, 64],
               decoder_block_out_channels=[64, 64, 64, 64], num_encoder_blocks=[1, 3, 3, 3],
               num_decoder_blocks=[3, 3, 3, 1], latent_magnitude=3, latent_shift=0.5, upsampling_scaling_factor=2,
               act_fn="relu", scaling_factor=1.0)
TEXT = dict(tokens=77, width=2048, pooled=1280, classifier="resnet50", classes=200, classifier_size=224)
CONFIGS = {"unet": UNET, "controlnet": CONTROLNET, "vae": VAE, "taesdxl": TAESDXL, "text": TEXT}
# the same structure at a size tests run in seconds (`--configs tiny`)
TINY = {"unet": UNET | dict(block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4], cross_attention_dim=32,
                            transformer_layers_per_block=[1, 1, 1], addition_time_embed_dim=8,
                            projection_class_embeddings_input_dim=16 + 6 * 8, layers_per_block=1),
        "vae": VAE | dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1),
        "taesdxl": TAESDXL | dict(encoder_block_out_channels=[16] * 4, decoder_block_out_channels=[16] * 4),
        "text": TEXT | dict(width=32, pooled=16, classifier="resnet18", classes=10, classifier_size=32)}
TINY["controlnet"] = {k: v for k, v in TINY["unet"].items() if k not in ("sample_size", "out_channels",
                                                                         "up_block_types")} | dict(
    conditioning_embedding_out_channels=[8, 8, 8, 8], conditioning_channels=3)
PHASES = {"model": ("plain", "stage1"),
          "guidance": ("guide_tiny", "gated_tiny", "gated_full", "guide_full_ckpt", "guide_full")}
SHARED = ("conv_in", "time_proj", "time_embedding", "add_time_proj", "add_embedding", "down_blocks", "mid_block")
STEPS, STAGE_BOUNDARY = 30, 0.7


def sharing_controlnet(unet, config: dict):
    """An SDXL ControlNetModel whose copy of the UNet encoder (`SHARED`) is the UNet's own modules; its hint
    embedding and zero convolutions are its own, randomly initialised. Returns (controlnet, MB it shares)."""
    from diffusers import ControlNetModel

    with torch.device("meta"):
        cn = ControlNetModel.from_config(config)
    shared = sum(p.numel() * 4 for name in SHARED for p in getattr(cn, name).parameters()) / 2**20
    for name in SHARED:
        setattr(cn, name, getattr(unet, name))
    for name in ("controlnet_cond_embedding", "controlnet_down_blocks", "controlnet_mid_block"):
        module = getattr(cn, name).to_empty(device="cpu")
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return cn.eval().requires_grad_(False), shared


def build(phase: str, configs: dict) -> dict:
    """Random-init models of one phase (fp32, eval, no grad) on the CPU."""
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel

    torch.manual_seed(0)
    text = configs["text"]
    models = {"taesdxl": AutoencoderTiny.from_config(configs["taesdxl"]),
              "classifier": build_classifier(text["classifier"], [f"class {i}" for i in range(text["classes"])],
                                             text["classifier_size"])}
    if phase == "model":
        models["unet"] = UNet2DConditionModel.from_config(configs["unet"])
        models["controlnet"], models["controlnet_shared_mb"] = sharing_controlnet(models["unet"],
                                                                                 configs["controlnet"])
    else:
        models["vae"] = AutoencoderKL.from_config(configs["vae"])
    return {k: v.eval().requires_grad_(False) if isinstance(v, torch.nn.Module) else v for k, v in models.items()}


class Stop(Exception):
    """Raised by the step callback: the sampling loop ends after its first step."""


class Bench:
    """Inputs and one callable per kind of a phase, on models from `build`, at `size` px."""

    def __init__(self, models: dict, size: int, configs: dict):
        from diffusers import DDIMScheduler

        self.m, self.size, text = models, size, configs["text"]
        gen = torch.Generator().manual_seed(1)
        h = size // 8
        self.ns = NoiseSchedule.scaled_linear()
        sigmas = self.ns.sample_sigmas(STEPS, "ddim")
        self.schedule = Schedule.from_preset("higfa", stage_boundary=STAGE_BOUNDARY)
        stages = [self.schedule.stage(self.ns.sigma_to_percent(float(s))) for s in sigmas[:-1]]
        self.n1, self.n2, self.i2 = stages.count(1), stages.count(2), stages.index(2)
        self.sigma2 = float(sigmas[self.i2])
        self.noise = torch.randn(1, 4, h, h, generator=gen)
        self.x0 = torch.randn(1, 4, h, h, generator=gen) * 0.8  # an x̂0 for the guidance parts
        self.emb = {b: torch.randn(1, text["tokens"], text["width"], generator=gen) for b in ("cond", "uncond")}
        ids = sdxl_time_ids(size)
        self.added = {b: {"text_embeds": torch.randn(1, text["pooled"], generator=gen), "time_ids": ids}
                      for b in ("cond", "uncond")}
        self.contour = (torch.rand(1, 3, size, size, generator=gen) > 0.9).float()
        # SDXL's scheduler config (scaled linear β 0.00085 … 0.012, leading spacing, offset 1) as DDIM, the CLI's
        self.scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                       beta_end=0.012, steps_offset=1, timestep_spacing="leading",
                                       clip_sample=False, set_alpha_to_one=False)
        self.decoders = {"tiny": vae_decode(models["taesdxl"])}
        if "vae" in models:
            self.decoders["full"] = vae_decode(models["vae"])
        self.last, self.costs = None, None

    def guide(self, preset: str, decoder: str = "tiny") -> Guide:
        return Guide(Schedule.from_preset(preset, stage_boundary=STAGE_BOUNDARY), self.m["classifier"],
                     self.decoders[decoder], target=0)

    def first_step(self, preset: str) -> torch.Tensor:
        """One step of `sample_with_scheduler` (the first of STEPS, stage 1); returns its x̂0 [1, 4, h, h]."""
        def stop(i, latents, x0):
            self.last = x0
            raise Stop

        try:
            sample_with_scheduler(self.m["unet"], self.scheduler, self.noise, self.guide(preset), self.emb,
                                  steps=STEPS, controlnet=self.m["controlnet"], contour=self.contour,
                                  callback=stop, added=self.added)
        except Stop:
            return self.last
        raise AssertionError("the sampling loop ran no step")

    def guidance(self, kind: str) -> torch.Tensor:
        """The stage-2 classifier part of a step: Guide.plan + Guide.refine on a fixed x̂0."""
        decoder, gated = ("tiny" if kind.endswith("_tiny") else "full"), kind.startswith("gated")
        if decoder == "full":  # checkpointing is a switch on the module: on only for the kind named after it
            if kind == "guide_full_ckpt":
                self.decoders["full"] = vae_decode(self.m["vae"], checkpoint=True)
            else:
                self.m["vae"].disable_gradient_checkpointing()
        guide = Guide(self.schedule, self.m["classifier"], self.decoders[decoder], target=0)
        if gated:  # the previous step measured p = 1 ≥ τ_skip: this step only measures
            guide.p_latest = torch.ones(1)
        plan = guide.plan(self.sigma2, self.ns.sigma_to_percent(self.sigma2), self.i2)
        out = guide.refine(self.x0, plan)
        assert guide.costs.decode_backward == (0 if gated else 1), "the kind did not run what it is named after"
        self.costs = guide.costs.as_dict()  # the Guide's own split: decode / classifier, forward / backward
        return out

    def run(self, kind: str) -> torch.Tensor:
        self.costs = None
        if kind in ("plain", "stage1"):
            return self.first_step("contour" if kind == "plain" else "higfa")
        return self.guidance(kind)


def _trim() -> None:
    """Give the heap's free memory back to the OS (glibc), so the RSS before an operation is what is live."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline may include freed memory (peaks read low)
        pass


def timed(bench: Bench, kind: str) -> dict:
    """One operation: wall and CPU seconds, peak RSS above the RSS right before it (MB), the 1-min load."""
    _trim()
    with peak_rss() as extra:
        w0, c0 = time.perf_counter(), time.process_time()
        out = bench.run(kind)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    assert torch.isfinite(out).all(), kind
    return {"wall": wall, "cpu": cpu, "peak_extra_mb": extra[0] / 2**20,
            "load": os.getloadavg()[0], **({"guide_costs": bench.costs} if bench.costs else {})}


def stage1_overhead(bench: Bench, n: int = 200) -> float:
    """Seconds per stage-1 step that HiGFA adds to the plain step (Guide.plan + refine, no classifier), timed
    alone over `n` calls (sd15.guide_overhead's measurement at SDXL's latent size)."""
    guide = bench.guide("higfa")
    sigma = float(bench.ns.sample_sigmas(STEPS, "ddim")[0])
    x0 = torch.zeros_like(bench.x0)
    t0 = time.perf_counter()
    for i in range(n):
        guide.refine(x0, guide.plan(sigma, bench.ns.sigma_to_percent(sigma), i))
    return (time.perf_counter() - t0) / n


def phase_run(phase: str, kinds, rounds: int, size: int, configs: dict, out: Path | None = None) -> dict:
    """A phase in this process: build, then `rounds` × each kind in turn; the result so far is written to `out`
    after every operation (a long run stopped early keeps what it measured)."""
    import resource

    t0 = time.perf_counter()
    models = build(phase, configs)
    bench = Bench(models, size, configs)
    mods = [m for m in models.values() if isinstance(m, torch.nn.Module)]
    weights = sum(p.numel() * p.element_size() for p in {id(p): p for m in mods for p in m.parameters()}.values())
    result = {"phase": phase, "size": size, "runs": {k: [] for k in kinds}, "build_seconds": time.perf_counter() - t0,
              "stage1_guide_overhead_seconds": stage1_overhead(bench) if phase == "guidance" else None,
              "weights_mb": weights / 2**20, "stage1_steps": bench.n1, "stage2_steps": bench.n2,
              "controlnet_shared_mb": models.get("controlnet_shared_mb")}
    for _ in range(rounds):
        for k in kinds:
            result["runs"][k].append(timed(bench, k))
            result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{phase} {k}: " + json.dumps(result["runs"][k][-1]), flush=True)
            if out is not None:
                out.write_text(json.dumps(result))
    return result


def run_phase(phase: str, args) -> dict:
    """A phase in a fresh process (`--phase`); its result."""
    out = args.out.with_name(f"{args.out.stem}_{phase}_{len(list(args.out.parent.glob(f'{args.out.stem}_{phase}_*')))}"
                             ".json")  # kept: `--summarise` rebuilds the result from these
    kinds = [k for k in PHASES[phase] if k in args.kinds]
    cmd = [sys.executable, "-m", __spec__.name, "--phase", phase, "--rounds", "1", "--size", str(args.size),
           "--threads", str(args.threads), "--configs", args.configs, "--kinds", *kinds, "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(out.read_text())


def summary(phases: dict[str, list[dict]], args) -> dict:
    """speed.json's `sdxl` section from the phase runs so far ({"model": [...], "guidance": [...]}; a phase's
    kinds may be split over several runs)."""
    runs: dict[str, list[dict]] = {}
    for results in phases.values():
        for res in results:
            for k, v in res["runs"].items():
                runs.setdefault(k, []).extend(v)
    med = {clock: {k: statistics.median(r[clock] for r in v) for k, v in runs.items()} for clock in ("wall", "cpu")}
    first = {p: r[0] for p, r in phases.items() if r}
    out = {"size": args.size, "latent": args.size // 8, "device": "cpu", "dtype": "fp32", "threads": args.threads,
           "rounds": min((len(v) for v in runs.values()), default=0), "steps": STEPS,
           "stage_boundary": STAGE_BOUNDARY, "text_encoders": "not run: random tokens [1, 77, 2048], pooled [1, 1280]",
           "seconds": {k: [round(r["wall"], 2) for r in v] for k, v in runs.items()},
           "cpu_seconds": {k: [round(r["cpu"], 2) for r in v] for k, v in runs.items()},
           "median_seconds": {k: round(v, 2) for k, v in med["wall"].items()},
           "median_cpu_seconds": {k: round(v, 2) for k, v in med["cpu"].items()},
           "load_average_1min": {k: [round(r["load"], 2) for r in v] for k, v in runs.items()},
           "peak_memory_mb": {k: round(max(r["peak_extra_mb"] for r in v), 1) for k, v in runs.items()},
           "phase_peak_rss_mb": {p: round(max(r["peak_rss_mb"] for r in v), 1) for p, v in phases.items() if v},
           "weights_mb": {p: round(r["weights_mb"], 1) for p, r in first.items()},
           "build_seconds": {p: round(r["build_seconds"], 1) for p, r in first.items()}}
    if "model" in first:
        out.update(stage1_steps=first["model"]["stage1_steps"], stage2_steps=first["model"]["stage2_steps"],
                   controlnet_shared_mb=round(first["model"]["controlnet_shared_mb"], 1))
    overheads = [r["stage1_guide_overhead_seconds"] for r in phases.get("guidance", [])]
    if overheads:
        out["stage1_guide_overhead_seconds"] = round(statistics.median(overheads), 6)
        if "plain" in runs and "stage1" not in runs:  # the stage-1 step = the plain step's call + the Guide's work
            for clock in med:
                med[clock]["stage1"] = med[clock]["plain"] + out["stage1_guide_overhead_seconds"]
            runs["stage1"] = [{**r, "wall": r["wall"] + out["stage1_guide_overhead_seconds"],
                               "cpu": r["cpu"] + out["stage1_guide_overhead_seconds"]} for r in runs["plain"]]
            out["stage1_from"] = "plain step + the Guide's stage-1 work timed alone"
    if "gated_full" not in runs and "guide_full_ckpt" in runs and "guide_costs" in runs["guide_full_ckpt"][0]:
        # a gated part is the guided part's forward alone (decode + classifier, no graph): take it from the guided
        # part's own forward timings (Guide.costs, wall), in CPU seconds at that operation's CPU/wall
        runs["gated_full"] = [{**r, "wall": fwd, "cpu": fwd * r["cpu"] / r["wall"]} for r in runs["guide_full_ckpt"]
                              for fwd in [r["guide_costs"]["seconds"]["decode_forward"]
                                          + r["guide_costs"]["seconds"]["classifier_forward"]]]
        med = {clock: {**med[clock], "gated_full": statistics.median(r[clock] for r in runs["gated_full"])}
               for clock in med}
        out["gated_full_from"] = "the guided part's own forward timings (Guide.costs: decode + classifier forward)"
    full = next((k for k in ("guide_full", "guide_full_ckpt") if k in runs and "gated_full" in runs), None)
    decoders = {"ratio_guidance_decoder": ("tiny", "guide_tiny", "gated_tiny")}
    if full:
        decoders["ratio_full_vae"] = ("full", full, "gated_full")
        out["full_vae_backward"] = "as is" if full == "guide_full" else "activation checkpointing"
    if {"plain", "stage1", "guide_tiny", "gated_tiny"} <= set(runs):
        n1, n2 = out["stage1_steps"], out["stage2_steps"]
        for key, (d, guided, gated) in decoders.items():
            # the keys without a suffix are CPU time: on a shared machine the operations' own work (wall in *_wall)
            for clock, suffix in (("cpu", ""), ("wall", "_wall")):
                m = {**med[clock], f"guide_{d}": med[clock][guided], f"gated_{d}": med[clock][gated]}
                out[f"{key}{suffix}"] = round(whole_run(m, n1, n2, d, 0.0), 3)
                out[f"{key}_all_gated{suffix}"] = round(whole_run(m, n1, n2, d, 1.0), 3)
            # round i of every kind together (rounds of different phases ran at different times)
            kinds = ("plain", "stage1", guided, gated)
            out.setdefault("per_round", {})[key] = [
                {clock: round(whole_run({"plain": runs["plain"][i][clock], "stage1": runs["stage1"][i][clock],
                                         f"guide_{d}": runs[guided][i][clock], f"gated_{d}": runs[gated][i][clock]},
                                        n1, n2, d, 0.0), 3) for clock in ("wall", "cpu")}
                for i in range(min(len(runs[k]) for k in kinds))]
        if "stage1_from" not in out:
            out["stage1_ratio"] = round(med["wall"]["stage1"] / med["wall"]["plain"], 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024, help="image size in px (SDXL's own: 1024)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--full-vae-backward", action="store_true", help="also time the full VAE's backward without "
                                                                    "checkpointing (about 24 GB at 1024 px)")
    p.add_argument("--stage1", action="store_true", help="also time the stage-1 step (the plain step's model call "
                                                          "+ the Guide's stage-1 work, which is timed alone anyway)")
    p.add_argument("--out", type=Path, default=OUTPUTS / "speed_sdxl.json")
    p.add_argument("--configs", choices=("real", "tiny"), default="real", help="tiny: the tests' stand-in sizes")
    p.add_argument("--summarise", nargs="+", type=Path, metavar="PHASE.json", help="write --out from saved phase "
                                                                                  "results (a run split by hand)")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--kinds", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = TINY if args.configs == "tiny" else CONFIGS
    if args.kinds is None:
        args.kinds = [k for ks in PHASES.values() for k in ks
                      if (k != "guide_full" or args.full_vae_backward) and (k != "stage1" or args.stage1)]
    if args.phase:
        phase_run(args.phase, [k for k in PHASES[args.phase] if k in args.kinds], args.rounds, args.size, configs,
                  args.out)
        return 0
    if args.summarise:
        saved = [json.loads(f.read_text()) for f in args.summarise]
        args.size = saved[0]["size"]
        result = {"sdxl": summary({p: [r for r in saved if r["phase"] == p] for p in PHASES}, args)}
        return write_part(args.out, result, shown={k: v for k, v in result["sdxl"].items() if "ratio" in k})
    phases: dict[str, list[dict]] = {"model": [], "guidance": []}
    for r in range(args.rounds):  # alternated: a change of load hits both phases alike
        for phase in phases:
            phases[phase].append(run_phase(phase, args))
            write_part(args.out, {"sdxl": summary(phases, args)}, shown={"round": r, "phase": phase})
    result = {"sdxl": summary(phases, args)}
    return write_part(args.out, result, shown={k: v for k, v in result["sdxl"].items() if "ratio" in k})


if __name__ == "__main__":
    raise SystemExit(main())
