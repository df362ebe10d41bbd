"""Model families: what the classifier step reads from a model's noise level σ (docs/method.md, "Model families").

Every sampler hands HiGFA a denoised x̂0 = D(x, σ) at the sampler's σ. How x relates to x0 depends on
the family's `sampling` (ComfyUI's `comfy/model_sampling.py` names):

- "eps", "v_prediction": x = x0 + σ·ε (variance exploding, VE). The network's output differs, x does not.
  ComfyUI's EPS, V_PREDICTION, EDM, X0, IMG_TO_IMG and COSMOS_RFLOW wrappers all noise x this way
  (SD 1.x/2.x, SDXL, their v-prediction and zero-SNR fine-tunes, Playground 2.5, CosXL, Stable Cascade).
- "const": x = (1 − σ)·x0 + σ·ε with σ ∈ [0, 1] (rectified flow: SD3.x, Flux, and other ComfyUI FLOW /
  FLUX models). x̃ = x / (1 − σ) = x0 + s·ε is the VE form with noise level s = σ / (1 − σ).

The step is x̂0' = x̂0 + w·σ_g²·normalise(g_VE): `guidance_sigma` gives σ_g, `gradient_factor` turns a
gradient taken on the family's own x (through the denoiser) into g_VE = ∇_x̃. σ_g is anchored on progress π,
so one `classifier_scale` moves x̂0 by the same amount at the same π in every family; for SD 1.x/SDXL's
schedule σ_g = σ (Tweedie's classifier guidance, unchanged).
"""

from __future__ import annotations

import functools
import math

from .sigmas import NoiseSchedule

SAMPLINGS = ("eps", "v_prediction", "const")
VE_SAMPLINGS = ("eps", "v_prediction")
# A VE model whose σ is the reference σ at its π up to this relative error is on the reference table (ComfyUI keeps
# the table in float32, ~1e-7): it keeps its own σ, bit for bit. Other tables (zero-SNR, EDM) differ by far more.
_SAME_TABLE = 1e-4


def check_sampling(sampling: str) -> str:
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling = {sampling!r}: choose one of {SAMPLINGS} (eps and v_prediction: x = x0 + σ·ε; "
                         "const: flow models, x = (1 − σ)·x0 + σ·ε)")
    return sampling


@functools.lru_cache(maxsize=1)
def reference_schedule() -> NoiseSchedule:
    """The SD 1.x / SDXL training schedule (scaled linear β, 1000 steps): the family `classifier_scale` is
    measured on (docs/quality.md, docs/speed.md), so its units are this schedule's σ²."""
    return NoiseSchedule.scaled_linear()


def reference_sigma(progress: float) -> float:
    """σ of the reference schedule at progress π ∈ [0, 1] (π = 1 − t/999, ComfyUI's percent convention),
    clamped to the table: π ≤ 0 is its σ_max (14.6), π ≥ 1 its σ_min (0.029)."""
    ref = reference_schedule()
    p = min(max(float(progress), 0.0), 1.0)
    return ref.sigma_at((1.0 - p) * (ref.num_timesteps - 1))


def ve_sigma(sigma: float, sampling: str) -> float:
    """The VE noise level s of the family's x at σ: σ for eps / v_prediction, σ / (1 − σ) for const
    (infinite at σ = 1, pure noise). Tweedie's classifier guidance at that level is x̂0 + s²·∇_x̃ log p(y | x̃)."""
    check_sampling(sampling)
    sigma = float(sigma)
    if sampling == "const":
        return math.inf if sigma >= 1.0 else sigma / (1.0 - sigma)
    return sigma


def gradient_factor(sigma: float, sampling: str) -> float:
    """∂x/∂x̃, so that ∇_x̃ = factor·∇_x for a gradient taken on the family's noisy x (through the denoiser):
    1 for eps / v_prediction, 1 − σ for const (x = (1 − σ)·x̃). A move δ of x̂0 at fixed ε moves x by factor·δ."""
    check_sampling(sampling)
    return 1.0 - float(sigma) if sampling == "const" else 1.0


def guidance_sigma(sigma: float, sampling: str, progress: float) -> float:
    """σ_g of the classifier step x̂0' = x̂0 + w·σ_g²·normalise(g_VE) at the model's σ and progress π.

    σ_g is the reference schedule's σ at π (`reference_sigma`), so the same w moves x̂0 by the same RMS at the
    same π in every family. A VE model on the reference table (SD 1.x, SD 2.x, SDXL, eps or v) gets its own σ,
    exactly: for it σ_g = σ is Tweedie's classifier guidance, what HiGFA always did; so is a VE σ beyond the ends of
    its model's table (π 0 or 1: custom sigmas). For other families this is Tweedie's classifier guidance at the VE
    level s = `ve_sigma` with the weight w·(σ_g / s)².
    """
    check_sampling(sampling)
    sigma = float(sigma)
    if sigma <= 0.0:
        return 0.0
    if sampling in VE_SAMPLINGS:
        if not 0.0 < float(progress) < 1.0:  # at or past its own table's ends (custom sigmas): π adds nothing to σ
            return sigma
        ref = reference_sigma(progress)
        return sigma if abs(ref - sigma) <= _SAME_TABLE * sigma else ref
    return reference_sigma(progress)
