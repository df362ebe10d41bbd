"""Stages `diffusion` and `diffusion_more` of `higfa train-world`: text encoder + UNet + ControlNet, jointly.

Both checkpoint every `TrainConfig.checkpoint_every` steps into `<out>/checkpoints/` and a cut run resumes from
there with the same batches; a finished stage removes its checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..contour import EdgeDetector
from .architecture import (CONTROLNET_EMBEDDING, SCHEDULER_CONFIG, UNET_CONFIG, build_text_encoder, build_tokenizer,
                           tokenize, with_latent_channels, write_model_index)
from .birds import TinyBirds
from .train_common import TrainConfig, cosine_lr, finish_checkpoint, images_pm1, load_vae, log, save_fp16


def _erase_patches(edges: torch.Tensor, gen: torch.Generator, p: float = 0.5, max_patches: int = 3,
                   size: float = 0.2) -> torch.Tensor:
    """Contour dropout during training: zero up to `max_patches` square patches in half the hints."""
    B, _, H, W = edges.shape
    out = edges.clone()
    for b in range(B):
        if float(torch.rand(1, generator=gen)) >= p:
            continue
        for _ in range(int(torch.randint(1, max_patches + 1, (1,), generator=gen))):
            s = max(2, int(size * H * float(torch.rand(1, generator=gen))))
            y0, x0 = (int(torch.randint(0, max(1, n - s), (1,), generator=gen)) for n in (H, W))
            out[b, :, y0:y0 + s, x0:x0 + s] = 0
    return out


def _diffusion_data(cfg: TrainConfig, world: TinyBirds, out: Path) -> dict[str, Any]:
    """Everything the diffusion stages train on: VAE posteriors of the `train` split, Canny contours,
    tokenised family prompts. The encoder is all that is used of the VAE (the latent space)."""
    vae = load_vae(out)
    data = world.split("train", cfg.diffusion_per_class)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = images_pm1(data.images)
        posts = [vae.encode(x[i:i + 256]).latent_dist for i in range(0, len(x), 256)]
        lat_mean, lat_std = torch.cat([p.mean for p in posts]), torch.cat([p.std for p in posts])
    del x, posts
    detector = EdgeDetector()
    edges = torch.from_numpy(np.stack([detector(im)[..., 0] for im in data.images]) > 127)  # [N,H,W] bool
    tokenizer = build_tokenizer(world.family_names)
    d = {"sf": float(vae.config.scaling_factor), "lat_mean": lat_mean, "lat_std": lat_std, "edges": edges,
         "tokenizer": tokenizer, "labels": torch.as_tensor(data.labels),
         "fam_ids": tokenize(tokenizer, [world.prompt(c) for c in range(world.num_classes)]),  # [K,L]
         "empty_ids": tokenize(tokenizer, [""]), "data_seconds": time.perf_counter() - t0}
    log(f"diffusion data: {len(d['labels'])} latents and contours in {d['data_seconds']:.0f} s")
    return d


def _diffusion_loop(cfg: TrainConfig, d: dict[str, Any], modules: list, steps: int, lr: float, seed: int,
                    checkpoint: Path | None = None) -> dict[str, Any]:
    """Train text encoder + UNet + ControlNet jointly for `steps` steps (cosine LR, EMA), then load the
    EMA weights into `modules`. With `checkpoint`, the state is saved every `cfg.checkpoint_every` steps
    and a run cut short resumes from it with the same batches (the generator state is saved too)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    ab = sched.alphas_cumprod.float()
    params = [p for m in modules for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    B, order, losses, first = cfg.diffusion_batch, torch.empty(0, dtype=torch.long), [], 0
    labels, edges, sf = d["labels"], d["edges"], d["sf"]
    text_encoder, unet, controlnet = modules
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)  # tensors and plain containers only: no code runs
        with torch.no_grad():
            for p, v in zip(params, state["params"]):
                p.copy_(v)
            for e, v in zip(ema, state["ema"]):
                e.copy_(v)
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        order, losses, first = state["order"], state["losses"], state["step"]
        log(f"resumed from {checkpoint} at step {first}")
    started, cpu_started = time.perf_counter(), time.process_time()
    for step in range(first, steps):
        if len(order) < B:
            order = torch.cat([order, torch.randperm(len(labels), generator=gen)])
        idx, order = order[:B], order[B:]
        for g in opt.param_groups:
            g["lr"] = lr * cosine_lr(step, steps, 50)
        z0 = (d["lat_mean"][idx] + d["lat_std"][idx] * torch.randn(d["lat_mean"][idx].shape, generator=gen)) * sf
        t = torch.randint(0, len(ab), (B,), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        a = ab[t].view(B, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        drop_text = torch.rand(B, generator=gen) < cfg.text_dropout
        ids = torch.where(drop_text[:, None], d["empty_ids"], d["fam_ids"][labels[idx]])
        emb = text_encoder(ids)[0]
        # The first n_ctrl samples get the contour (the batch order is random already).
        n_ctrl = int((torch.rand(B, generator=gen) >= cfg.contour_dropout).sum())
        extra = {}
        if n_ctrl > 0:
            hint = edges[idx[:n_ctrl]].float()[:, None].expand(-1, 3, -1, -1)
            hint = _erase_patches(hint, gen)
            down, mid = controlnet(zt[:n_ctrl], t[:n_ctrl], encoder_hidden_states=emb[:n_ctrl], controlnet_cond=hint,
                                   return_dict=False)
            pad = lambda r, n=n_ctrl: torch.cat([r, r.new_zeros((B - n, *r.shape[1:]))])  # noqa: E731
            extra = {"down_block_additional_residuals": [pad(r) for r in down],
                     "mid_block_additional_residual": pad(mid)}
        pred = unet(zt, t, encoder_hidden_states=emb, **extra).sample
        snr = a.flatten() / (1 - a.flatten())
        weight = snr.clamp(max=cfg.min_snr_gamma) / snr
        loss = (weight * (pred - eps).pow(2).flatten(1).mean(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step == first:
            el, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            n = step + 1 - first
            log(f"diffusion step {step + 1}/{steps} loss {np.mean(losses[-50:]):.4f} "
                 f"({el / n:.2f} s/step wall, {cpu / n:.2f} s/step CPU)")
        if checkpoint is not None and ((step + 1) % cfg.checkpoint_every == 0) and step + 1 < steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"params": [p.detach() for p in params], "ema": ema, "opt": opt.state_dict(),
                        "gen": gen.get_state(), "order": order, "losses": losses, "step": step + 1}, tmp)
            tmp.replace(checkpoint)  # atomic: a kill mid-write keeps the previous checkpoint
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    for m in modules:
        m.eval()
    return {"seconds": round(time.perf_counter() - started, 1), "steps": steps, "resumed_at": first,
            "batch": B, "images": len(labels), "final_loss": round(float(np.mean(losses[-50:])), 4)}


def _save_diffusion(out: Path, tokenizer, modules: list) -> None:
    from diffusers import DDIMScheduler

    text_encoder, unet, controlnet = modules
    save_fp16(text_encoder, out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    save_fp16(unet, out / "unet")
    save_fp16(controlnet, out / "controlnet")
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    write_model_index(out)


def train_diffusion(cfg: TrainConfig, world: TinyBirds, out: Path) -> dict[str, Any]:
    from diffusers import ControlNetModel, UNet2DConditionModel

    d = _diffusion_data(cfg, world, out)
    text_encoder = build_text_encoder(d["tokenizer"], cfg.seed + 1).train()
    torch.manual_seed(cfg.seed + 2)
    unet = UNet2DConditionModel(**with_latent_channels(UNET_CONFIG, cfg.latent_channels)).train()
    torch.manual_seed(cfg.seed + 3)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING).train()
    modules = [text_encoder, unet, controlnet]
    info = _diffusion_loop(cfg, d, modules, cfg.diffusion_steps, cfg.diffusion_lr, cfg.seed + 4,
                           out / "checkpoints" / "diffusion.pt")
    _save_diffusion(out, d["tokenizer"], modules)
    finish_checkpoint(out / "checkpoints" / "diffusion.pt")
    info["data_seconds"] = round(d["data_seconds"], 1)
    log(f"diffusion done: {info}")
    return info


def train_diffusion_more(cfg: TrainConfig, world: TinyBirds, out: Path) -> dict[str, Any]:
    """Continue the diffusion stage's models (EMA weights) for `diffusion_more_steps` with a fresh
    cosine schedule (a warm restart): the budget can grow without redoing the first stage, and
    `make train-world` still reproduces the shipped weights (both stages, fixed seeds)."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    d = _diffusion_data(cfg, world, out)
    f32 = dict(torch_dtype=torch.float32)
    modules = [CLIPTextModel.from_pretrained(out / "text_encoder", **f32).train(),
               UNet2DConditionModel.from_pretrained(out / "unet", **f32).train(),
               ControlNetModel.from_pretrained(out / "controlnet", **f32).train()]
    info = _diffusion_loop(cfg, d, modules, cfg.diffusion_more_steps, cfg.diffusion_more_lr, cfg.seed + 5,
                           out / "checkpoints" / "diffusion_more.pt")
    _save_diffusion(out, d["tokenizer"], modules)
    finish_checkpoint(out / "checkpoints" / "diffusion_more.pt")
    info["data_seconds"] = round(d["data_seconds"], 1)
    log(f"diffusion_more done: {info}")
    return info

