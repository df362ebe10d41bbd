"""The built-in world's tiny guidance decoder: a TAESD-architecture AutoencoderTiny distilled from the world VAE.

Stage `tiny_decoder` of `higfa train-world` (after `vae` and `diffusion`): the student decodes the UNet's latent
space directly (TAESD's convention: scaling_factor 1.0, input = the latent the UNet sees, output in [-1, 1]) and is
trained to reproduce the world VAE decoder's image on the latents guidance actually decodes: one-step x̂0 of the
world's own UNet + ControlNet at noise levels of stage 2 and below (π in [0.5, 1]), and clean latents. On the
classifier path only the decoder's vector-Jacobian product matters (guidance uses ∂ log p / ∂ latent), so the
student is also trained to give the teacher's VJP direction (cosine loss, `grad_weight`) for the cotangents the
path really sees: the few-shot guide's ∇ log p(y | image) on the teacher's image, for a random species y. Its encoder
is distilled too (to the VAE's posterior mean, scaled), so the folder is a complete diffusers AutoencoderTiny that
`higfa augment --guidance-vae` and any TAESD loader accept. Saved in float16 to `<out>/tiny_decoder/`.

The image loss weights the source's marking and leg regions (`marking_weight`, `part_weight`), as the `vae_decoder`
stage does: with a plain L1 the student drew the markings 2.4x and the legs 3x less faithfully than the teacher
(L1 0.175 vs 0.073 and 0.32 vs 0.11 on test images) and the world oracle found the species in 68 % of its decodes
of clean test latents (the teacher's: 100 %) — the classifier path then cannot see what it is asked to add.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .architecture import TINY_DECODER_CONFIG, TINY_DECODER_FOLDER
from .train_common import save_fp16

# The architecture and the runtime names (TINY_DECODER_FOLDER, GUIDANCE_DEFAULT, load_tiny_decoder): architecture.py.
SETTINGS: dict[str, Any] = dict(per_class=48, steps=1500, batch=32, lr=2e-3, min_progress=0.5, clean_share=0.25,
                                encoder_steps=200, grad_weight=1.0, marking_weight=16.0, part_weight=16.0,
                                check_per_class=8)


@torch.no_grad()
def _pool(models, per_class: int, gen: torch.Generator, settings: dict
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor]:
    """Distillation data: latents [N,8,16,16] in the UNet's space (one-step x̂0, or clean for a `clean_share`),
    the VAE decoder's images of them [N,3,64,64] in [-1,1], the clean latents, the source images [N,64,64,3] and
    per-pixel loss weights [N,1,64,64] (1, plus `marking_weight` / `part_weight` on the source's marking / leg
    regions: x̂0 at stage-2 noise levels keeps the source's pose, so the masks stay close)."""
    from ..backends.denoiser import vae_decode

    data = models.world.split("train", per_class, masks=True)
    weights = torch.as_tensor(data.loss_weights(settings["marking_weight"], settings["part_weight"]))
    scale = float(models.vae.config.scaling_factor)
    latents, clean = [], []
    for i in range(0, len(data), 128):
        x = torch.as_tensor(data.images[i:i + 128]).permute(0, 3, 1, 2).float() / 127.5 - 1
        z0 = models.vae.encode(x).latent_dist.mean * scale
        clean.append(z0)
        idx = list(range(i, min(i + 128, len(data))))
        seeds = [int(s) for s in torch.randint(0, 2**31 - 1, (len(idx),), generator=gen)]
        den = models.denoiser([models.world.prompt(int(data.labels[j])) for j in idx],
                              models.contours(data.images[idx], seeds))
        progress = settings["min_progress"] + (1 - settings["min_progress"]) * torch.rand(len(idx), generator=gen)
        sigma = torch.tensor([models.noise_schedule.percent_to_sigma(float(p)) for p in progress])
        xt = z0 + sigma.reshape(-1, 1, 1, 1) * torch.randn(z0.shape, generator=gen)
        x0 = den(xt, sigma, ("cond",), 1.0)[0]  # σ per sample; text-conditioned, contour at strength 1
        keep = torch.rand(len(idx), generator=gen) < settings["clean_share"]
        latents.append(torch.where(keep.reshape(-1, 1, 1, 1), z0, x0))
    latents = torch.cat(latents)
    decode = vae_decode(models.vae)
    teacher = torch.cat([decode(latents[i:i + 256]) * 2 - 1 for i in range(0, len(latents), 256)])
    return latents, teacher, torch.cat(clean), data.images, weights


def _teacher_vjps(models, latents: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Cotangents v [N,3,64,64] (∇ log p_guide(y | image) w.r.t. the image in [-1,1], random y, unit RMS) and the
    teacher decoder's VJPs Jᵀv [N,8,16,16] at the pool latents: what the classifier path propagates."""
    from ..backends.denoiser import vae_decode

    decode, guide = vae_decode(models.vae), models.guidance
    vs, gs = [], []
    for i in range(0, len(latents), 128):
        z = latents[i:i + 128].clone().requires_grad_(True)
        with torch.enable_grad():
            image = decode(z)  # [0,1]
            leaf = image.detach().requires_grad_(True)
            y = torch.randint(0, guide.num_classes, (len(z),), generator=gen)
            logp = torch.log_softmax(guide(leaf), -1)[torch.arange(len(z)), y]
            (v,) = torch.autograd.grad(logp.sum(), leaf)
            v = v / 2  # the student decodes to [-1,1]: d image01 = d image / 2
            v = v / (v.flatten(1).pow(2).mean(1).sqrt().reshape(-1, 1, 1, 1) + 1e-12)
            (g,) = torch.autograd.grad(image * 2 - 1, z, grad_outputs=v)
        vs.append(v.detach())
        gs.append(g.detach())
    return torch.cat(vs), torch.cat(gs)


def _mirror(t: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Samples [B,...] with flip[b] mirrored left-right (the world's birds face both ways)."""
    return torch.where(flip.reshape(-1, 1, 1, 1), t.flip(-1), t)


def _cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).mean()


def train_tiny_decoder(cfg, world, out: Path) -> dict[str, Any]:
    """Distil `out/vae`'s decoder (and encoder) into an AutoencoderTiny saved as `out/tiny_decoder` (float16)."""
    from diffusers import AutoencoderTiny

    from .models import load_world

    s = SETTINGS
    models = load_world(out)
    gen = torch.Generator().manual_seed(cfg.seed + 23)
    t_pool = time.perf_counter()
    latents, teacher, clean, images, weights = _pool(models, s["per_class"], gen, s)
    cotangents, vjps = _teacher_vjps(models, latents, gen) if s["grad_weight"] > 0 else (None, None)
    t_pool = time.perf_counter() - t_pool
    torch.manual_seed(cfg.seed + 29)
    tiny = AutoencoderTiny(**TINY_DECODER_CONFIG).train()
    opt = torch.optim.AdamW(tiny.decoder.parameters(), lr=s["lr"], weight_decay=0.0)
    started, losses, cos_losses = time.perf_counter(), [], []
    for step in range(s["steps"]):
        idx = torch.randint(0, len(latents), (s["batch"],), generator=gen)
        flip = torch.rand(s["batch"], generator=gen) < 0.5  # mirror pairs: the world's birds face both ways
        z, target, w = _mirror(latents[idx], flip), _mirror(teacher[idx], flip), _mirror(weights[idx], flip)
        lr = s["lr"] * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / s["steps"])))
        for g in opt.param_groups:
            g["lr"] = lr
        z.requires_grad_(vjps is not None)
        decoded = tiny.decode(z).sample
        loss = l1 = ((decoded - target).abs() * w).mean()
        if vjps is not None:  # double backward: the student's VJP is differentiable in its weights
            (g_student,) = torch.autograd.grad(decoded, z, grad_outputs=_mirror(cotangents[idx], flip),
                                              create_graph=True)
            cos = _cosine_loss(g_student, _mirror(vjps[idx], flip))
            loss = loss + s["grad_weight"] * cos
            cos_losses.append(float(cos.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(l1.detach()))
        if (step + 1) % 50 == 0:
            extra = f" VJP 1-cos {np.mean(cos_losses[-50:]):.4f}" if cos_losses else ""
            print(f"[{time.strftime('%H:%M:%S')}] tiny decoder step {step + 1}/{s['steps']} "
                  f"weighted L1 {np.mean(losses[-50:]):.4f}{extra}", flush=True)
    # The encoder is not on the guidance path; a short distillation makes the folder a usable autoencoder.
    x_all = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    opt = torch.optim.AdamW(tiny.encoder.parameters(), lr=s["lr"])
    for _ in range(s["encoder_steps"]):
        idx = torch.randint(0, len(x_all), (s["batch"],), generator=gen)
        loss = (tiny.encode(x_all[idx]).latents - clean[idx]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    enc_l1 = float(loss.detach())
    seconds = time.perf_counter() - started
    tiny.eval()
    with torch.no_grad():
        held = latents[-256:]
        err = float((tiny.decode(held).sample - teacher[-256:]).abs().mean())
    vjp_cos = None
    if vjps is not None:
        z = held.clone().requires_grad_(True)
        with torch.enable_grad():
            (g_student,) = torch.autograd.grad(tiny.decode(z).sample, z, grad_outputs=cotangents[-256:])
        vjp_cos = round(1 - float(_cosine_loss(g_student, vjps[-256:])), 4)
    check = _check(models, tiny, s["check_per_class"])
    save_fp16(tiny, out / TINY_DECODER_FOLDER)  # without the block_out_channels diffusers would warn about on load
    n_dec = sum(p.numel() for p in tiny.decoder.parameters())
    n_vae = sum(p.numel() for p in models.vae.decoder.parameters()) + sum(
        p.numel() for p in models.vae.post_quant_conv.parameters())
    return {"seconds": round(seconds, 1), "pool_seconds": round(t_pool, 1), "pool_latents": len(latents),
            "settings": s, "final_weighted_l1_pm1": round(float(np.mean(losses[-100:])), 4),
            "train_pool_l1_pm1_last256": round(err, 4),
            "train_pool_vjp_cosine_last256": vjp_cos, "encoder_l1": round(enc_l1, 4),
            "decoder_parameters": n_dec, "teacher_decoder_parameters": n_vae, "test_check": check}


@torch.no_grad()
def _check(models, tiny, per_class: int) -> dict[str, Any]:
    """Clean latents of `per_class` test images per species decoded by the teacher and by the student: L1 to the
    teacher's image (all pixels, marking regions, legs; in [-1,1]) and the world oracle's species accuracy on each
    decoding — does the student still draw what the classifier path must see?"""
    from ..backends.denoiser import vae_decode

    data = models.world.split("test", per_class, masks=True)
    x = torch.as_tensor(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    z = models.vae.encode(x).latent_dist.mean * float(models.vae.config.scaling_factor)
    teacher, student = vae_decode(models.vae)(z), vae_decode(tiny)(z)  # [0,1]
    err = (student - teacher).abs() * 2
    marks = torch.as_tensor(data.masks)[:, None].expand_as(err)
    legs = torch.as_tensor(data.parts)[:, None].expand_as(err)

    def oracle(images: torch.Tensor) -> float:
        return round(float((models.oracle(images).argmax(-1).numpy() == data.labels).mean()), 4)

    return {"images": len(x), "l1_pm1": round(float(err.mean()), 4),
            "l1_pm1_markings": round(float(err[marks].mean()), 4) if marks.any() else None,
            "l1_pm1_legs": round(float(err[legs].mean()), 4) if legs.any() else None,
            "oracle_species_teacher": oracle(teacher), "oracle_species_student": oracle(student)}

