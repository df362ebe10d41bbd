"""The peer ratio at Stable Diffusion 1.5 size: `higfa augment` ÷ diffusers' own StableDiffusionControlNetPipeline
on identical models, seed (the job's noise), scheduler (DDIM), steps, size, CFG and ControlNet strength.

    python -m benchmarks.speed.peer [--steps 8] [--rounds 3] [--threads 1]

Models: random-init at the real sizes (benchmarks/configs/sd15: UNet 860 M, ControlNet 361 M, VAE; a CLIP-L-size
text encoder with the stand-ins' per-character tokenizer), saved once as a diffusers folder under
outputs/bench/peer_sd15/ (about 5.6 GB, fp32) that both sides load. 512 px, batch 1.
Arms, interleaved per round, median of the rounds:
  job       `higfa augment --preset contour --variants 2` in this process: the second image's time from the
            manifest (`seconds`: contour, sampling, decode; warm, as every image after a dataset's first; the
            model load is not in it), and the whole command's wall time (load, 2 images, file writes).
  pipeline  pipe(prompt, negative_prompt, image=hint, latents=the job's noise, guidance_scale=7.5,
            controlnet_conditioning_scale=0.75, num_inference_steps, output_type="pil"): prompt encoding, the
            same DDIM loop, decode, PIL conversion. Its hint is a blank 512 px image (the ControlNet's work does
            not depend on the hint's content; the job's is its own transformed contour).
`--preset contour`, not `cfg`: the cfg preset has contour strength 0, where the job skips the ControlNet while the
ControlNet pipeline runs it anyway (at scale 0); that would flatter the job. The contour preset does exactly the
pipeline's work (both branches through ControlNet + UNet, CFG 7.5, strength 0.75 on every step).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
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


def run_job(folder: Path, data: Path, out: Path, steps: int, threads: int) -> dict:
    from higfa.jobs import cli

    shutil.rmtree(out, ignore_errors=True)
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(["augment", "--data", str(data), "--out", str(out), "--model", str(folder), "--preset",
                       "contour", "--steps", str(steps), "--variants", "2", "--threads", str(threads),
                       "--no-progress"])
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"higfa augment failed ({rc}): {err.getvalue()[-2000:]}")
    rec = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()][-1]
    run = json.loads((out / "run.json").read_text())
    return {"seconds": rec["seconds"], "command_wall": wall, "seed": rec["seed"], "prompt": rec["prompt"],
            "negative": run["fingerprint"]["negative_prompt"], "image": out / rec["output"]}


def run_pipeline(pipe, job: dict, hint, steps: int) -> float:
    noise = torch.randn(1, 4, 64, 64, generator=torch.Generator("cpu").manual_seed(job["seed"]))
    t0 = time.perf_counter()
    pipe(job["prompt"], negative_prompt=job["negative"] or None, image=hint, num_inference_steps=steps,
         guidance_scale=7.5, controlnet_conditioning_scale=0.75, latents=noise, eta=0.0, output_type="pil")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)  # the ratio is per step + one decode: a few steps suffice
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUTPUTS / "speed_peer.json")
    args = p.parse_args(argv)
    from diffusers import StableDiffusionControlNetPipeline
    from PIL import Image

    torch.set_num_threads(args.threads)
    folder = build_folder()
    work = OUTPUTS / "peer_work"
    data = write_data(work / "data")
    pipe = StableDiffusionControlNetPipeline.from_pretrained(str(folder), local_files_only=True,
                                                             torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    hint = Image.fromarray(np.zeros((512, 512, 3), np.uint8))
    run_pipeline(pipe, {"seed": 0, "prompt": "a bird", "negative": ""}, hint, 1)  # warm, as the job's second image
    jobs, pipes, walls = [], [], []
    for r in range(args.rounds):
        job = run_job(folder, data, work / f"out{r}", args.steps, args.threads)
        torch.set_num_threads(args.threads)  # the job restores the caller's setting; keep the pipeline's the same
        seconds = run_pipeline(pipe, job, hint, args.steps)
        jobs.append(job["seconds"])
        walls.append(job["command_wall"])
        pipes.append(seconds)
        print(f"round {r}: job {job['seconds']:.1f} s/image (command {job['command_wall']:.1f} s incl. load), "
              f"pipeline {seconds:.1f} s", flush=True)
    ratio = statistics.median(jobs) / statistics.median(pipes)
    result = {"peer": {"sd15_contour_vs_diffusers": round(ratio, 4),
                       "job_seconds": [round(s, 3) for s in jobs], "pipeline_seconds": [round(s, 3) for s in pipes],
                       "job_command_seconds": [round(s, 3) for s in walls],
                       "steps": args.steps, "rounds": args.rounds, "threads": args.threads, "size": 512,
                       "preset": "contour", "scheduler": "DDIM", "device": "cpu", "dtype": "fp32"}}
    return write_part(args.out, result)


if __name__ == "__main__":
    raise SystemExit(main())
