"""Noise levels of a discrete VP diffusion model (SD 1.5/SDXL style) in k-diffusion σ form.

σ_t = sqrt((1 − ᾱ_t) / ᾱ_t); progress π = 1 − t/(T−1) with t the (continuous) timestep of σ —
ComfyUI's `percent_to_sigma` convention, plus the inverse ComfyUI lacks.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

SPACINGS = ("ddim", "karras", "uniform")


class NoiseSchedule:
    """Sigma table of a discrete model; `sigmas[t]` ascending in t (shape [T])."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if ac.ndim != 1 or len(ac) < 2:
            raise ValueError("alphas_cumprod must be a 1-D table of at least 2 entries")
        self.alphas_cumprod = ac
        self.sigmas = ((1 - ac) / ac).sqrt()
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000) -> "NoiseSchedule":
        """SD 1.x / SDXL training schedule."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1 - betas, 0))

    @classmethod
    def linear(cls, beta_start: float = 0.0001, beta_end: float = 0.02, steps: int = 1000) -> "NoiseSchedule":
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0))

    @property
    def num_timesteps(self) -> int:
        return len(self.sigmas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_at(self, t: float) -> float:
        """σ at a continuous timestep (log-linear interpolation, as ComfyUI's ModelSamplingDiscrete)."""
        t = min(max(float(t), 0.0), self.num_timesteps - 1.0)
        lo = int(math.floor(t))
        hi = min(lo + 1, self.num_timesteps - 1)
        w = t - lo
        return float(((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp())

    def timestep(self, sigma: float) -> float:
        """Continuous timestep of σ, the exact inverse of `sigma_at` inside the table's range."""
        ls = math.log(max(float(sigma), 1e-12))
        table = self.log_sigmas
        if ls <= float(table[0]):
            return 0.0
        if ls >= float(table[-1]):
            return self.num_timesteps - 1.0
        hi = int(torch.searchsorted(table, torch.tensor(ls, dtype=table.dtype)))
        lo = hi - 1
        return lo + (ls - float(table[lo])) / float(table[hi] - table[lo])

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return math.inf
        if percent >= 1.0:
            return 0.0
        return self.sigma_at((1.0 - percent) * (self.num_timesteps - 1))

    def sigma_to_percent(self, sigma: float) -> float:
        """π of σ; σ = 0 is π = 1 and σ above the table is π = 0."""
        if float(sigma) <= 0.0:
            return 1.0
        return 1.0 - self.timestep(sigma) / (self.num_timesteps - 1)

    def sample_sigmas(self, steps: int, spacing: str = "ddim", denoise: float = 1.0) -> torch.Tensor:
        """Descending σ for `steps` steps, ending with 0 (shape [steps+1], float32).

        ddim: diffusers' DDIMScheduler "leading" spacing with steps_offset=1 (SD's config), so the
        diffusers backend and this reference visit the same timesteps. karras: Karras et al. ρ=7.
        uniform: timesteps evenly spaced from T−1 to 0. denoise < 1 keeps the last `steps` of a
        longer schedule, as ComfyUI does for img2img.
        """
        if steps < 1:
            raise ValueError(f"steps = {steps}: need at least 1 sampling step")
        if not 0.0 < denoise <= 1.0:
            raise ValueError(f"denoise = {denoise}: must lie in (0, 1]")
        if spacing not in SPACINGS:
            raise ValueError(f"spacing = {spacing!r}: choose one of {SPACINGS}")
        total = steps if denoise >= 1.0 else int(steps / denoise)
        T = self.num_timesteps
        if spacing == "ddim":
            ratio = T // total
            ts = [min(i * ratio + 1, T - 1) for i in range(total)][::-1]
            sig = [float(self.sigmas[t]) for t in ts]
        elif spacing == "uniform":
            sig = [self.sigma_at(t) for t in torch.linspace(T - 1, 0, total).tolist()]
        else:
            rho, lo, hi = 7.0, self.sigma_min ** (1 / 7.0), self.sigma_max ** (1 / 7.0)
            sig = [(hi + i / max(total - 1, 1) * (lo - hi)) ** rho for i in range(total)]
        out = torch.tensor(sig[-steps:] + [0.0], dtype=torch.float32)
        return out


def percent_of_sigma(percent_to_sigma: Callable[[float], float], sigma: float, iterations: int = 60) -> float:
    """π of σ for any decreasing map π -> σ (e.g. ComfyUI's `model_sampling.percent_to_sigma` of a
    flow or EDM model, which has no sigma table), by bisection. σ <= 0 is π = 1."""
    sigma = float(sigma)
    if sigma <= 0.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if percent_to_sigma(mid) > sigma:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
