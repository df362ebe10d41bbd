"""The peer ratio at Stable Diffusion 1.5 size: `higfa augment` ÷ diffusers' own pipeline doing the same work, on
identical models, seed (the job's noise), scheduler (DDIM), steps, size, prompt, CFG and ControlNet strength.

    python -m benchmarks.speed.peer [--preset cfg|contour] [--steps 2] [--rounds 2] [--threads 1]

Models: random-init at the real sizes (benchmarks/configs/sd15: UNet 860 M, ControlNet 361 M, VAE; a CLIP-L-size
text encoder with the stand-ins' per-character tokenizer), saved once as a diffusers folder under
outputs/bench/peer_sd15/ (about 5.2 GB, fp32) that both sides load. 512 px, batch 1.
Arms, interleaved per round (each round: the job, then each pipeline arm), median of the rounds:
  job        `higfa augment --preset P --variants 2` in this process: the second image's time from the manifest
             (`seconds`: contour, sampling, decode; warm, as every image after a dataset's first; the model load
             is not in it), and the whole command's wall time (load, 2 images, file writes).
  pipeline arms: pipe(prompt, negative_prompt, latents=the job's noise, guidance_scale=7.5, num_inference_steps,
             output_type="pil"): prompt encoding, the same DDIM loop, decode, PIL conversion.
--preset cfg (the issue's `peer.sd15_cfg_vs_diffusers`): text CFG 7.5, ControlNet strength 0 on every step. The
  job does not run the ControlNet at strength 0, so the pipeline doing the same work is diffusers'
  StableDiffusionPipeline on the same UNet/VAE/text encoder/scheduler (`sd`, the reported ratio). diffusers'
  StableDiffusionControlNetPipeline at controlnet_conditioning_scale=0 (`controlnet_scale0`) still runs the
  ControlNet on every step; the job ÷ it is written too (`sd15_cfg_vs_diffusers_controlnet_pipeline`), as the
  literal reading of the issue, and it flatters the job by the ControlNet's cost.
--preset contour (`peer.sd15_contour_vs_diffusers`): both branches through ControlNet + UNet, CFG 7.5, strength
  0.75 on every step: exactly StableDiffusionControlNetPipeline's work at controlnet_conditioning_scale=0.75
  (`controlnet`). Its hint is a blank 512 px image (the ControlNet's work does not depend on the hint's content;
  the job's is its own transformed contour).
Each arm's image is compared with the job's (max |difference| in 8-bit levels, `max_pixel_difference`): the same
models, noise and steps give nearly the same picture (cfg; contour differs by its hint). A run adds its preset's
result to --out and keeps the other preset's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from .parts import OUTPUTS, ROOT, write_part

CONFIGS = ROOT / "benchmarks" / "configs" / "sd15"
FOLDER = OUTPUTS / "peer_sd15"
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIGS / f"{name}.json").read_text()).items() if not k.startswith("_")}


def build_folder(folder: Path = FOLDER) -> Path:
    """The SD-1.5-size random-init ControlNet pipeline as a diffusers folder (kept between runs)."""
    from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from higfa.testing.pipeline_folder import tiny_scheduler, tiny_tokenizer

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, eos_token_id=eos,
                                        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
                                        pad_token_id=eos, **CLIP_L))
    pipe = StableDiffusionControlNetPipeline(
        vae=AutoencoderKL.from_config(_config("vae")), text_encoder=text, tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_config(_config("unet")),
        controlnet=ControlNetModel.from_config(_config("controlnet")), scheduler=tiny_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return folder


def write_data(root: Path, size: int = 512) -> Path:
    import cv2

    (root / "bird").mkdir(parents=True, exist_ok=True)
    img = np.full((size, size, 3), 40, np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 4, (200, 120, 60), -1)
    cv2.rectangle(img, (size // 8, size // 8), (size // 3, size // 3), (255, 255, 255), 4)
    cv2.imwrite(str(root / "bird" / "img0.png"), img)
    return root


def run_job(folder: Path, data: Path, out: Path, steps: int, threads: int, preset: str) -> dict:
    from higfa.jobs import cli

    shutil.rmtree(out, ignore_errors=True)
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(["augment", "--data", str(data), "--out", str(out), "--model", str(folder), "--preset",
                       preset, "--steps", str(steps), "--variants", "2", "--threads", str(threads),
                       "--no-progress"])
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"higfa augment failed ({rc}): {err.getvalue()[-2000:]}")
    rec = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()][-1]
    run = json.loads((out / "run.json").read_text())
    return {"seconds": rec["seconds"], "command_wall": wall, "seed": rec["seed"], "prompt": rec["prompt"],
            "negative": run["fingerprint"]["negative_prompt"], "image": out / rec["output"]}


# arm -> (pipeline kind, ControlNet scale) per preset; the first arm is the one the preset's ratio is taken over
ARMS = {"cfg": {"sd": ("sd", None), "controlnet_scale0": ("controlnet", 0.0)},
        "contour": {"controlnet": ("controlnet", 0.75)}}
KEYS = {"cfg": {"sd": "sd15_cfg_vs_diffusers", "controlnet_scale0": "sd15_cfg_vs_diffusers_controlnet_pipeline"},
        "contour": {"controlnet": "sd15_contour_vs_diffusers"}}


def pipelines(folder: Path) -> dict:
    """{"controlnet": StableDiffusionControlNetPipeline, "sd": StableDiffusionPipeline} over the same modules."""
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

    cn = StableDiffusionControlNetPipeline.from_pretrained(str(folder), local_files_only=True,
                                                           torch_dtype=torch.float32)
    sd = StableDiffusionPipeline(**{k: v for k, v in cn.components.items() if k != "controlnet"},
                                 requires_safety_checker=False)
    for pipe in (cn, sd):
        pipe.set_progress_bar_config(disable=True)
    return {"controlnet": cn, "sd": sd}


def run_pipeline(pipe, job: dict, hint, steps: int, scale: float | None) -> tuple[float, np.ndarray]:
    """(seconds, image [H,W,3] uint8) of one pipeline call on the job's noise, prompt and step count; the image
    is as large as `hint`."""
    latent = hint.size[0] // pipe.vae_scale_factor
    noise = torch.randn(1, pipe.unet.config.in_channels, latent, latent,
                        generator=torch.Generator("cpu").manual_seed(job["seed"]))
    extra = {} if scale is None else {"image": hint, "controlnet_conditioning_scale": scale}
    t0 = time.perf_counter()
    out = pipe(job["prompt"], negative_prompt=job["negative"] or None, num_inference_steps=steps, guidance_scale=7.5,
               latents=noise, eta=0.0, output_type="pil", **extra)
    return time.perf_counter() - t0, np.asarray(out.images[0])


def merged(path: Path, preset: str, ratios: dict, details: dict) -> dict:
    """The peer output with this preset's ratios and details, the other preset's kept (a file from before the
    presets were split keeps its contour result under "contour")."""
    old = json.loads(path.read_text()).get("peer", {}) if path.is_file() else {}
    if "job_seconds" in old:  # the one-preset layout: its details were the contour run's
        old = {"sd15_contour_vs_diffusers": old.pop("sd15_contour_vs_diffusers"), "contour": old}
    for key in KEYS[preset].values():
        old.pop(key, None)
    return {"peer": {**old, **ratios, preset: details}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(ARMS), default="cfg")
    p.add_argument("--steps", type=int, default=2)  # the ratio is per step + one decode: a few steps suffice
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUTPUTS / "speed_peer.json")
    p.add_argument("--folder", type=Path, default=FOLDER, help="the diffusers ControlNet pipeline folder (built at "
                                                                 "SD-1.5 size when missing; tests pass a tiny one)")
    p.add_argument("--work", type=Path, default=OUTPUTS / "peer_work", help="the jobs' data and outputs")
    args = p.parse_args(argv)
    from PIL import Image

    torch.set_num_threads(args.threads)
    folder = build_folder(args.folder)
    pipes = pipelines(folder)
    size = pipes["sd"].unet.config.sample_size * pipes["sd"].vae_scale_factor  # the model's own (512 for SD 1.5)
    data = write_data(args.work / "data", size)
    hint = Image.fromarray(np.zeros((size, size, 3), np.uint8))
    arms = ARMS[args.preset]
    for kind, scale in arms.values():  # warm, as the job's second image
        run_pipeline(pipes[kind], {"seed": 0, "prompt": "a bird", "negative": ""}, hint, 1, scale)
    jobs, walls, loads = [], [], []
    times: dict[str, list[float]] = {a: [] for a in arms}
    diffs: dict[str, int] = {}
    for r in range(args.rounds):
        job = run_job(folder, data, args.work / f"out{r}", args.steps, args.threads, args.preset)
        torch.set_num_threads(args.threads)  # the job restores the caller's setting; keep the pipeline's the same
        jobs.append(job["seconds"])
        walls.append(job["command_wall"])
        mine = np.asarray(Image.open(job["image"]).convert("RGB")).astype(np.int16)
        for arm, (kind, scale) in arms.items():
            seconds, image = run_pipeline(pipes[kind], job, hint, args.steps, scale)
            times[arm].append(seconds)
            diffs[arm] = int(np.abs(image.astype(np.int16) - mine).max())
        loads.append(round(os.getloadavg()[0], 2))
        print(f"round {r}: job {job['seconds']:.1f} s/image (command {job['command_wall']:.1f} s incl. load), "
              + ", ".join(f"{a} {v[-1]:.1f} s" for a, v in times.items()) + f", load {loads[-1]}", flush=True)
    ratios = {KEYS[args.preset][a]: round(statistics.median(jobs) / statistics.median(v), 4) for a, v in times.items()}
    details = {"job_seconds": [round(s, 3) for s in jobs], "job_command_seconds": [round(s, 3) for s in walls],
               **{f"{a}_seconds": [round(s, 3) for s in v] for a, v in times.items()},
               "max_pixel_difference": diffs, "load_average_1min": loads, "pipelines": {
                   a: ("StableDiffusionPipeline" if k == "sd" else "StableDiffusionControlNetPipeline")
                   + ("" if sc is None else f" (controlnet_conditioning_scale {sc})") for a, (k, sc) in arms.items()},
               "steps": args.steps, "rounds": args.rounds, "threads": args.threads, "size": size,
               "preset": args.preset, "scheduler": "DDIM", "device": "cpu", "dtype": "fp32",
               "date": time.strftime("%Y-%m-%d")}
    return write_part(args.out, merged(args.out, args.preset, ratios, details))


if __name__ == "__main__":
    raise SystemExit(main())
