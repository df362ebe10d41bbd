"""The pure math of HiGFA guidance: CFG, the classifier gradient on x̂0, normalisation, the update.

Shapes: latents x, x̂0, g are [B, C, h, w]; σ, scales and confidences are [B] (or scalars).
σ form (k-diffusion / ComfyUI): x = x0 + σ·ε,  D(x, σ) = x̂0.
VP form (diffusers):           z = √ᾱ·x0 + √(1−ᾱ)·ε, so x = z/√ᾱ and σ² = (1−ᾱ)/ᾱ.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

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
    denoiser_forward: int = 0  # extra denoiser passes with grad (grad_through_denoiser)
    denoiser_backward: int = 0
    autocast_fallbacks: int = 0  # low-precision passes redone in float32 (non-finite gradient)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("decode_forward", "decode_backward", "classifier_forward", "classifier_backward", "denoiser_forward",
         "denoiser_backward"), 0.0))

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


@dataclass(frozen=True)
class Views:
    """K random differentiable views of a decoded image (the defence of CLIP-guided diffusion against
    adversarial gradients): each view is a random resized crop (a side fraction in [1 − crop, 1], at a
    random place, i.e. scale + translation), a horizontal flip with probability ½, and Gaussian noise of
    std `noise`. The draw depends on `seed` only and is shared by the samples of a batch, so a batch
    gives what its samples give one by one. count 1 = the image itself (no view is drawn)."""

    count: int = 1
    crop: float = 0.0
    noise: float = 0.0
    seed: int = 0

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """image [B,3,H,W] -> views [K·B,3,H,W] (view-major: rows k·B … k·B + B − 1 are view k)."""
        if self.count <= 1:
            return image
        K, (B, C, H, W) = self.count, image.shape
        g = torch.Generator().manual_seed(int(self.seed))
        side = 1.0 - self.crop * torch.rand(K, generator=g, dtype=torch.float64)  # fraction of the side kept
        shift = (1.0 - side).unsqueeze(1) * (2 * torch.rand(K, 2, generator=g, dtype=torch.float64) - 1)
        flip = torch.where(torch.rand(K, generator=g) < 0.5, -1.0, 1.0).double()
        theta = torch.zeros(K, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 1, 1] = side * flip, side
        theta[:, :, 2] = shift
        noise = torch.randn(K, 1, C, H, W, generator=g) * self.noise
        theta = theta.to(image.device, image.dtype).repeat_interleave(B, 0)
        grid = F.affine_grid(theta, [K * B, C, H, W], align_corners=False)
        views = F.grid_sample(image.repeat(K, 1, 1, 1), grid, mode="bilinear", padding_mode="border",
                              align_corners=False)
        return views + noise.to(image.device, image.dtype).expand(K, B, C, H, W).reshape(K * B, C, H, W)


@dataclass
class Measurement:
    """What one pass of the classifier path gives: p [B] (mean over views of softmax[y]), g [B,C,h,w]
    (∇ of the views' mean log p w.r.t. the input, None without grad) and the decoded image [B,3,H,W]."""

    p: torch.Tensor
    g: torch.Tensor | None
    image: torch.Tensor
    fallback: bool = False  # the low-precision pass gave a non-finite gradient: this one ran in float32


def measure(x: torch.Tensor, decode: Decode, classifier: Callable[[torch.Tensor], torch.Tensor],
            target: torch.Tensor, *, grad: bool, costs: Costs | None = None, views: Views | None = None,
            denoise: Callable[[torch.Tensor], torch.Tensor] | None = None,
            autocast: torch.dtype | None = None) -> Measurement:
    """The classifier path on latent x [B,C,h,w]: x̂0 = x (or denoise(x)), image = decode(x̂0), views,
    classifier; p and, with grad, g = ∇_x mean_k log softmax(f(view_k(image)))[y].

    `denoise` (σ-form noisy latent -> x̂0, differentiable) makes g the gradient through the denoiser.
    `autocast` (e.g. torch.bfloat16) runs decode + classifier in that precision; a non-finite p or g
    then reruns the pass in float32 (`Measurement.fallback`; counted in `costs.autocast_fallbacks`).
    """
    if autocast is not None:
        m = _measure_once(x, decode, classifier, target, grad, costs, views, denoise, autocast)
        finite = torch.isfinite(m.p).all() and (m.g is None or torch.isfinite(m.g).all())
        if finite:
            return m
        if costs is not None:
            costs.autocast_fallbacks += 1
        m = _measure_once(x, decode, classifier, target, grad, costs, views, denoise, None)
        m.fallback = True
        return m
    return _measure_once(x, decode, classifier, target, grad, costs, views, denoise, None)


def _measure_once(x, decode, classifier, target, grad, costs, views, denoise, autocast) -> Measurement:
    views = views or Views()
    amp = (torch.autocast(x.device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext())
    # Outside inference mode (ComfyUI samples under it): everything autograd saves is created here.
    with torch.inference_mode(False), torch.set_grad_enabled(grad):
        B = x.shape[0]
        target = target.to(x.device).long().reshape(-1).expand(B).clone().repeat(views.count)
        rows = torch.arange(B * views.count, device=x.device)
        z = x.detach().clone().requires_grad_(grad)
        x0 = z
        if denoise is not None:
            with _Timer(costs, "denoiser_forward", z):
                x0 = denoise(z)
        with _Timer(costs, "decode_forward", z), amp:
            image = decode(x0)
        image_leaf = image.detach().requires_grad_(True) if grad else image
        with _Timer(costs, "classifier_forward", z), amp:
            logits = classifier(views.apply(image_leaf))
        logp = torch.log_softmax(logits.float(), dim=-1)[rows, target].reshape(views.count, B)
        p = logp.exp().mean(0).detach()
        if not grad:
            return Measurement(p, None, image.detach())
        # Backward in parts (classifier, decoder, denoiser) so their costs can be told apart.
        with _Timer(costs, "classifier_backward", z):
            (g_image,) = torch.autograd.grad(logp.mean(0).sum(), image_leaf)
        if denoise is None:
            with _Timer(costs, "decode_backward", z):
                (g,) = torch.autograd.grad(image, z, grad_outputs=g_image.to(image.dtype))
        else:
            with _Timer(costs, "decode_backward", z):
                (g_x0,) = torch.autograd.grad(image, x0, grad_outputs=g_image.to(image.dtype))
            with _Timer(costs, "denoiser_backward", z):
                (g,) = torch.autograd.grad(x0, z, grad_outputs=g_x0)
    return Measurement(p, g.detach(), image.detach())


def classifier_log_prob(x0: torch.Tensor, decode: Decode, classifier: Callable[[torch.Tensor], torch.Tensor],
                        target: torch.Tensor, *, grad: bool, costs: Costs | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """p = softmax(f(decode(x̂0)))[y] per sample ([B]) and, with grad, g = ∇_{x̂0} log p ([B,C,h,w]).

    The gradient goes through the decoder and the classifier only, never the denoiser. It runs
    outside inference mode on a fresh copy of x̂0, so it works under ComfyUI's inference_mode.
    (`measure` is the general form: views, the gradient through the denoiser, autocast.)
    """
    m = measure(x0, decode, classifier, target, grad=grad, costs=costs)
    return m.p, m.g


def _per_sample(v, like: torch.Tensor) -> torch.Tensor | float:
    """Broadcast a scalar or a [B] vector against a [B, ...] tensor."""
    if isinstance(v, torch.Tensor) and v.ndim > 0:
        return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
    return float(v)
