"""diffusers models behind the core `Denoiser` protocol (σ form), and a VAE `decode` for guidance.

A UNet2DConditionModel (+ optional ControlNetModel) predicting ε or v in VP form is wrapped so the
reference sampler and the guide see D(x, σ) = x̂0 with x = z/√ᾱ.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .sigmas import NoiseSchedule


def noise_schedule_from_scheduler(scheduler) -> NoiseSchedule:
    """The training noise table of any diffusers scheduler that has `alphas_cumprod`."""
    return NoiseSchedule(torch.as_tensor(scheduler.alphas_cumprod))


class DiffusersDenoiser:
    """D(x, σ) for a diffusers UNet, with text branches and a ControlNet contour.

    embeddings: {"cond": [1 or B, L, D], "uncond": [1 or B, L, D]} text-encoder states.
    contour: [1 or B, 3, H, W] in [0,1] (the ControlNet hint at image resolution), or None.
    Both branches run as one batch. The ControlNet is skipped when the strength is 0.
    """

    def __init__(self, unet, embeddings: dict[str, torch.Tensor], noise_schedule: NoiseSchedule,
                 controlnet=None, contour: torch.Tensor | None = None, prediction_type: str = "epsilon"):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {prediction_type!r}: supported are 'epsilon' and 'v_prediction'")
        if controlnet is not None and contour is None:
            raise ValueError("a ControlNet was given without a contour image: pass contour=[B,3,H,W] in [0,1]")
        self.unet, self.controlnet, self.contour = unet, controlnet, contour
        self.embeddings = embeddings
        self.noise_schedule = noise_schedule
        self.prediction_type = prediction_type

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        t = torch.tensor([self.noise_schedule.timestep(float(s)) for s in sigma.reshape(-1)], dtype=torch.float32)
        # σ of an integer timestep comes back as t ± 1e-4 in float32: snap so ε(t) matches the scheduler's call.
        return torch.where((t - t.round()).abs() < 1e-3, t.round(), t)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, branches: Sequence[str],
                 contour_strength: float) -> list[torch.Tensor]:
        B, n = x.shape[0], len(branches)
        sig = sigma.reshape(-1).to(x.device, torch.float32).expand(B)
        c_in = (sig**2 + 1).rsqrt().reshape(B, 1, 1, 1)
        z = (x * c_in.to(x.dtype)).repeat(n, 1, 1, 1)
        t = self.timestep(sig).to(x.device).repeat(n)
        emb = torch.cat([self._expand(self.embeddings[b], B) for b in branches]).to(x.device, self.unet.dtype)
        z = z.to(self.unet.dtype)
        extra = {}
        if self.controlnet is not None and contour_strength > 0:
            hint = self._expand(self.contour, B).repeat(n, 1, 1, 1).to(x.device, self.controlnet.dtype)
            down, mid = self.controlnet(z, t, encoder_hidden_states=emb, controlnet_cond=hint,
                                        conditioning_scale=float(contour_strength), return_dict=False)
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        out = self.unet(z, t, encoder_hidden_states=emb, **extra).sample.to(x.dtype)
        xs = x.repeat(n, 1, 1, 1)
        s = sig.repeat(n).reshape(-1, 1, 1, 1).to(x.dtype)
        if self.prediction_type == "epsilon":
            x0 = xs - s * out
        else:  # v: x0 = √ᾱ·z − √(1−ᾱ)·v with z = √ᾱ·x
            a = 1 / (s**2 + 1)
            x0 = a * xs - (1 - a).sqrt() * out
        return list(x0.chunk(n))

    @staticmethod
    def _expand(t: torch.Tensor, B: int) -> torch.Tensor:
        if t.shape[0] == B:
            return t
        if t.shape[0] != 1:
            raise ValueError(f"batch mismatch: got {t.shape[0]} conditioning rows for a batch of {B}")
        return t.expand(B, *t.shape[1:])


def vae_decode(vae):
    """Latent x̂0 (scaled, as the UNet sees it) -> image [B,3,H,W] roughly in [0,1], differentiable."""
    scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)

    def decode(x0: torch.Tensor) -> torch.Tensor:
        img = vae.decode((x0 / scale + shift).to(vae.dtype)).sample
        return (img.float() + 1) / 2

    return decode
