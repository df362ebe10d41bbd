"""Stages `vae` and `vae_decoder` of `higfa train-world`: the world's AutoencoderKL (architecture.VAE_CONFIG)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .architecture import VAE_CONFIG, with_latent_channels
from .birds import TinyBirds
from .train_common import StageCheckpoint, TrainConfig, cosine_lr, images_pm1, load_vae, log, save_fp16


def _crops(x: torch.Tensor, w: torch.Tensor, masks: torch.Tensor, size: int, gen: torch.Generator,
           focus: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Random size×size crops (corners on the 4-px latent grid), centred on a marking for a `focus`
    share of them, randomly flipped. The VAE is fully convolutional, so crops train it for whole
    images at a quarter of the cost, and the focus spends that on the small details."""
    B, _, H, W = x.shape
    xs, ws = [], []
    for b in range(B):
        ys, xs_ = torch.nonzero(masks[b], as_tuple=True)
        if len(ys) and float(torch.rand(1, generator=gen)) < focus:
            k = int(torch.randint(len(ys), (1,), generator=gen))
            jitter = torch.randint(-size // 4, size // 4 + 1, (2,), generator=gen)
            top, left = int(ys[k]) - size // 2 + int(jitter[0]), int(xs_[k]) - size // 2 + int(jitter[1])
        else:
            top, left = (int(v) for v in torch.randint(0, H - size + 1, (2,), generator=gen))
        top = min(max(0, top // 4 * 4), H - size)
        left = min(max(0, left // 4 * 4), W - size)
        cx, cw = x[b, :, top:top + size, left:left + size], w[b, :, top:top + size, left:left + size]
        if float(torch.rand(1, generator=gen)) < 0.5:
            cx, cw = cx.flip(-1), cw.flip(-1)
        xs.append(cx)
        ws.append(cw)
    return torch.stack(xs), torch.stack(ws)


def _vae_batch(cfg: TrainConfig, x_all: torch.Tensor, w_all: torch.Tensor, masks: torch.Tensor, order: torch.Tensor,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The next `vae_batch` crops (and their L1 weights) from a shuffled epoch order; returns the rest of it."""
    if len(order) < cfg.vae_batch:
        order = torch.cat([order, torch.randperm(len(x_all), generator=gen)])
    idx, order = order[:cfg.vae_batch], order[cfg.vae_batch:]
    x, w = _crops(x_all[idx], w_all[idx], masks[idx], cfg.vae_crop, gen)
    return x, w, order


def train_vae(cfg: TrainConfig, world: TinyBirds, out: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    data = world.split("train", cfg.vae_per_class, masks=True)
    x_all = images_pm1(data.images)
    masks = torch.as_tensor(data.masks)
    w_all = torch.as_tensor(data.loss_weights(cfg.vae_marking_weight))
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**with_latent_channels(VAE_CONFIG, cfg.latent_channels)).train()
    with torch.no_grad():
        # Start with a nearly deterministic posterior (σ ≈ 0.05): with σ ≈ 1 at init the decoder
        # spends its short training learning to ignore latent noise, and reconstructions blur.
        vae.quant_conv.bias[cfg.latent_channels:] = cfg.vae_init_logvar
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    started, order, losses = time.perf_counter(), torch.empty(0, dtype=torch.long), []
    ckpt = StageCheckpoint(out, "vae", cfg.checkpoint_every)
    order, losses, first = ckpt.resume(vae, opt, gen, order, losses)
    for step in range(first, cfg.vae_steps):
        x, w, order = _vae_batch(cfg, x_all, w_all, masks, order, gen)
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * cosine_lr(step, cfg.vae_steps, 30)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        l1 = ((rec - x).abs() * w).mean()
        loss = l1 + cfg.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(l1.detach()))
        if (step + 1) % 50 == 0 or step == 0:
            log(f"vae step {step + 1}/{cfg.vae_steps} weighted L1 {np.mean(losses[-50:]):.4f}")
        ckpt.save_training(step + 1, cfg.vae_steps, vae, opt, gen, order, losses)
    seconds = time.perf_counter() - started
    vae.eval()
    # SD's convention: latents are multiplied by scaling_factor = 1 / std so the UNet sees unit variance.
    with torch.no_grad():
        mean = torch.cat([vae.encode(x_all[i:i + 256]).latent_dist.mean for i in range(0, min(len(x_all), 1024), 256)])
        recon_err = float((vae.decode(mean[:256]).sample - x_all[:256]).abs().mean())
    scale = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=round(scale, 5))
    save_fp16(vae, out / "vae")
    ckpt.finish()
    info = {"seconds": round(seconds, 1), "steps": cfg.vae_steps, "resumed_at": first, "batch": cfg.vae_batch,
            "images": len(x_all),
            "final_weighted_l1": round(float(np.mean(losses[-50:])), 4), "recon_l1_pm1": round(recon_err, 4),
            "scaling_factor": round(scale, 5)}
    log(f"vae done in {seconds:.0f} s: {info}")
    return info


def train_vae_decoder(cfg: TrainConfig, world: TinyBirds, out: Path) -> dict[str, Any]:
    """Fine-tune the VAE's decoder (and post-quant conv) with the encoder frozen: the latent space the
    diffusion model lives in does not change, so this stage can run before or after the diffusion
    stages. The `vae` stage's short budget leaves the decoder the weak half: the world oracle finds
    the species in 91 % of its reconstructions, and 99 % after this stage (docs/world.md)."""
    vae = load_vae(out)
    data = world.split("train", cfg.vae_per_class, masks=True)
    x_all = images_pm1(data.images)
    masks = torch.as_tensor(data.masks | data.parts)  # crops centre on a marking or a leg
    w_all = torch.as_tensor(data.loss_weights(cfg.vae_decoder_marking_weight, cfg.vae_decoder_part_weight))
    with torch.no_grad():
        probe = x_all[:256]
        before = float((vae.decode(vae.encode(probe).latent_dist.mean).sample - probe).abs().mean())
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    opt = torch.optim.AdamW(params, lr=cfg.vae_decoder_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 12)
    started, order, losses = time.perf_counter(), torch.empty(0, dtype=torch.long), []
    ckpt = StageCheckpoint(out, "vae_decoder", cfg.checkpoint_every)
    order, losses, first = ckpt.resume(vae, opt, gen, order, losses)
    for step in range(first, cfg.vae_decoder_steps):
        x, w, order = _vae_batch(cfg, x_all, w_all, masks, order, gen)
        for g in opt.param_groups:
            g["lr"] = cfg.vae_decoder_lr * cosine_lr(step, cfg.vae_decoder_steps, 20)
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        l1 = ((vae.decode(z).sample - x).abs() * w).mean()
        opt.zero_grad(set_to_none=True)
        l1.backward()
        opt.step()
        losses.append(float(l1.detach()))
        if (step + 1) % 50 == 0 or step == 0:
            log(f"vae_decoder step {step + 1}/{cfg.vae_decoder_steps} weighted L1 {np.mean(losses[-50:]):.4f}")
        ckpt.save_training(step + 1, cfg.vae_decoder_steps, vae, opt, gen, order, losses)
    seconds = time.perf_counter() - started
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        after = float((vae.decode(vae.encode(probe).latent_dist.mean).sample - probe).abs().mean())
    info = {"ceiling": ceiling(vae, world, out)} if (out / "oracle.safetensors").is_file() else {}
    save_fp16(vae, out / "vae")  # (in float16 from here on)
    ckpt.finish()
    info |= {"seconds": round(seconds, 1), "steps": cfg.vae_decoder_steps, "resumed_at": first, "batch": cfg.vae_batch,
            "images": len(x_all), "final_weighted_l1": round(float(np.mean(losses[-50:])), 4),
            "recon_l1_pm1_before": round(before, 4), "recon_l1_pm1": round(after, 4)}
    log(f"vae_decoder done in {seconds:.0f} s: {info}")
    return info




@torch.no_grad()
def ceiling(vae, world: TinyBirds, out: Path, per_class: int = 20) -> dict[str, Any]:
    """The world oracle's accuracy on `per_class` test images per species and on their VAE round trips (posterior
    mean): what guidance through this decoder can show at best (docs/world.md)."""
    from ..classifier import load_classifier
    from ..training import evaluate

    oracle = load_classifier(out / "oracle.safetensors").float()
    test = world.split("test", per_class)
    x = images_pm1(test.images)
    rec = torch.cat([vae.decode(vae.encode(x[i:i + 256]).latent_dist.mean).sample for i in range(0, len(x), 256)])
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return {"images": len(x), "oracle_real": round(evaluate(oracle, test.images, test.labels)["accuracy"], 4),
            "oracle_reconstructed": round(evaluate(oracle, rec, test.labels)["accuracy"], 4)}
