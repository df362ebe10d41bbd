"""The framework-free reference sampler: DDIM (η = 0, i.e. Euler in σ form) or ancestral DDIM.

It is the specification the ComfyUI guider and the diffusers backend are tested against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from .guidance import Costs, cfg_combine
from .guide import Guide
from .schedule import Schedule
from .sigmas import NoiseSchedule
from .trace import Trace

UNCOND, COND = "uncond", "cond"


class Denoiser(Protocol):
    """A diffusion model in σ form.

    __call__(x [B,C,h,w], sigma [B], branches, contour_strength) -> one x̂0 per branch, where a
    branch is "cond" (text prompt) or "uncond" (negative/empty prompt) and the contour (ControlNet)
    is applied at `contour_strength` (0: not run at all). Implementations may batch the branches.
    Only for schedules with `grad_through_denoiser` is it called with `grad=True`: the outputs must then
    be differentiable w.r.t. x (otherwise it runs without gradient).
    """

    noise_schedule: NoiseSchedule

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, branches: Sequence[str],
                 contour_strength: float) -> list[torch.Tensor]: ...


@dataclass
class SampleResult:
    latent: torch.Tensor  # [B,C,h,w]
    trace: Trace
    costs: Costs
    denoiser_calls: int = 0  # model evaluations (one per branch)
    seconds: dict[str, float] = field(default_factory=dict)


def sample(denoiser: Denoiser, noise: torch.Tensor, sigmas: torch.Tensor, guide: Guide | Schedule, *,
           latent: torch.Tensor | None = None, eta: float = 0.0, generator: torch.Generator | None = None,
           callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> SampleResult:
    """Sample from `noise` [B,C,h,w] along descending `sigmas` (ending at 0).

    `latent` (img2img) is noised to sigmas[0]; with the full schedule it is usually zeros.
    `guide` may be a bare Schedule for presets that need no classifier. `callback(i, x, x0)` is
    called after each step (progress bars, previews, interruption).
    """
    if not isinstance(guide, Guide):
        guide = Guide(guide)
    guide.reset()
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D tensor of at least two noise levels (steps + 1)")
    ns = denoiser.noise_schedule
    x = noise * sigmas[0] if latent is None else latent + noise * sigmas[0]
    calls, t_model = 0, 0.0
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        plan = guide.plan(s, ns.sigma_to_percent(s), index=i)
        branches = (UNCOND, COND) if plan.cfg != 1.0 else (COND,)
        sig = torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device)
        t0 = time.perf_counter()
        outs = denoiser(x, sig, branches, plan.contour)
        t_model += time.perf_counter() - t0
        calls += len(branches)
        x0 = cfg_combine(outs[0], outs[1], plan.cfg) if len(outs) == 2 else outs[0]
        if guide.schedule.grad_through_denoiser:
            x0 = guide.refine(x0, plan, x, _differentiable(denoiser, sig, branches, plan.contour, plan.cfg))
        else:
            x0 = guide.refine(x0, plan)
        x = _ddim_step(x, x0, s, s_next, eta, generator)
        if callback is not None:
            callback(i, x, x0)
    return SampleResult(x, guide.trace, guide.costs, calls, {"denoiser": t_model})


def _differentiable(denoiser: Denoiser, sig: torch.Tensor, branches, contour: float, cfg: float):
    """x -> the CFG-combined x̂0 of the same evaluation, with the gradient (`grad_through_denoiser`)."""
    def denoise(x: torch.Tensor) -> torch.Tensor:
        outs = denoiser(x, sig, branches, contour, grad=True)
        return cfg_combine(outs[0], outs[1], cfg) if len(outs) == 2 else outs[0]

    return denoise


def _ddim_step(x: torch.Tensor, x0: torch.Tensor, s: float, s_next: float, eta: float,
               generator: torch.Generator | None) -> torch.Tensor:
    """DDIM in σ form, written as k-diffusion's Euler (η = 0) / Euler-ancestral (η > 0) step so
    it agrees numerically with ComfyUI's `euler` and `euler_ancestral` samplers."""
    d = (x - x0) / s
    if eta == 0.0 or s_next == 0.0:
        return x + d * (s_next - s)
    sigma_up = min(s_next, eta * (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5)
    sigma_down = (s_next**2 - sigma_up**2) ** 0.5
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return x + d * (sigma_down - s) + noise * sigma_up
