"""The pure math of HiGFA guidance: CFG, the classifier gradient on x̂0, normalisation, the update.

Shapes: latents x, x̂0, g are [B, C, h, w]; σ, scales and confidences are [B] (or scalars).
σ form (k-diffusion / ComfyUI): x = x0 + σ·ε,  D(x, σ) = x̂0.
VP form (diffusers):           z = √ᾱ·x0 + √(1−ᾱ)·ε, so x = z/√ᾱ and σ² = (1−ᾱ)/ᾱ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

Decode = Callable[[torch.Tensor], torch.Tensor]  # latent x̂0 [B,C,h,w] -> image [B,3,H,W] in [0,1]


def cfg_combine(uncond: torch.Tensor, cond: torch.Tensor, scale) -> torch.Tensor:
    """x̂0 = D_∅ + w·(D_c − D_∅)."""
    return uncond + _per_sample(scale, cond) * (cond - uncond)


def rms(t: torch.Tensor) -> torch.Tensor:
    """Root-mean-square per sample: [B, ...] -> [B]."""
    return t.flatten(1).pow(2).mean(1).sqrt()


def normalise(g: torch.Tensor, mode: str = "rms", eps: float = 1e-12) -> torch.Tensor:
    """`rms`: g / rms(g) per sample (scale-free across classifiers); `identity`: g unchanged."""
    if mode == "identity":
        return g
    if mode != "rms":
        raise ValueError(f"grad_norm = {mode!r}: choose 'rms' or 'identity'")
    return g / (_per_sample(rms(g), g) + eps)


def sigma_form_update(x0: torch.Tensor, g: torch.Tensor, scale, sigma) -> torch.Tensor:
    """x̂0' = x̂0 + w·σ²·g  (g already normalised, taken w.r.t. x̂0 ≈ ∇_x log p)."""
    return x0 + _per_sample(scale, x0) * _per_sample(sigma, x0) ** 2 * g


def eps_form_update(eps: torch.Tensor, grad_z: torch.Tensor, scale, alpha_bar) -> torch.Tensor:
    """ε' = ε − w·√(1−ᾱ)·∇_z log p, the VP form of `sigma_form_update` when ∇_z = ∇_x / √ᾱ."""
    return eps - _per_sample(scale, eps) * (1 - _per_sample(alpha_bar, eps)) ** 0.5 * grad_z


@dataclass
class Costs:
    """Counts and seconds of the guidance work (benchmarks and tests read these)."""

    decode_forward: int = 0
    decode_backward: int = 0
    classifier_forward: int = 0
    classifier_backward: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("decode_forward", "decode_backward", "classifier_forward", "classifier_backward"), 0.0))

    def add(self, name: str, seconds: float) -> None:
        setattr(self, name, getattr(self, name) + 1)
        self.seconds[name] += seconds

    def as_dict(self) -> dict:
        return {"decode_forward": self.decode_forward, "decode_backward": self.decode_backward,
                "classifier_forward": self.classifier_forward, "classifier_backward": self.classifier_backward,
                "seconds": dict(self.seconds)}


class _Timer:
    def __init__(self, costs: Costs | None, name: str, ref: torch.Tensor):
        self.costs, self.name, self.cuda = costs, name, ref.is_cuda

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        if self.costs is not None and exc[0] is None:
            self.costs.add(self.name, time.perf_counter() - self.t0)


def classifier_log_prob(x0: torch.Tensor, decode: Decode, classifier: Callable[[torch.Tensor], torch.Tensor],
                        target: torch.Tensor, *, grad: bool, costs: Costs | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """p = softmax(f(decode(x̂0)))[y] per sample ([B]) and, with grad, g = ∇_{x̂0} log p ([B,C,h,w]).

    The gradient goes through the decoder and the classifier only, never the denoiser. It runs
    outside inference mode on a fresh copy of x̂0, so it works under ComfyUI's inference_mode.
    Backward is done in two parts (classifier, then decoder) so their costs can be told apart.
    """
    with torch.inference_mode(False), torch.set_grad_enabled(grad):
        # Everything autograd may save is created here, outside inference mode (indices included).
        target = target.to(x0.device).long().reshape(-1).expand(x0.shape[0]).clone()
        rows = torch.arange(x0.shape[0], device=x0.device)
        z = x0.detach().clone().requires_grad_(grad)
        with _Timer(costs, "decode_forward", z):
            image = decode(z)
        if grad:
            image_leaf = image.detach().requires_grad_(True)
        else:
            image_leaf = image
        with _Timer(costs, "classifier_forward", z):
            logp = torch.log_softmax(classifier(image_leaf).float(), dim=-1)[rows, target]
        if not grad:
            return logp.exp().detach(), None
        with _Timer(costs, "classifier_backward", z):
            (g_image,) = torch.autograd.grad(logp.sum(), image_leaf)
        with _Timer(costs, "decode_backward", z):
            (g,) = torch.autograd.grad(image, z, grad_outputs=g_image)
    return logp.exp().detach(), g.detach()


def _per_sample(v, like: torch.Tensor) -> torch.Tensor | float:
    """Broadcast a scalar or a [B] vector against a [B, ...] tensor."""
    if isinstance(v, torch.Tensor) and v.ndim > 0:
        return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
    return float(v)
