"""Model families (higfa.families, docs/method.md "Model families"): the classifier step of every `sampling`
equals its derivation (finite differences), one classifier_scale moves x̂0 by the same RMS at the same π in
every family, and SD 1.x / SDXL keep their σ bit for bit."""

import math

import pytest
import torch

from higfa.families import gradient_factor, guidance_sigma, reference_sigma, ve_sigma
from higfa.guide import Guide
from higfa.schedule import Schedule
from higfa.sigmas import NoiseSchedule

SAMPLINGS = ("eps", "v_prediction", "const")


def _zero_snr(ns: NoiseSchedule) -> NoiseSchedule:
    """The zero-terminal-SNR rescaling v-prediction fine-tunes use (Lin et al. 2024; ComfyUI's
    rescale_zero_terminal_snr_sigmas), written from the paper: shift √ᾱ so its last value is 0, rescale the first."""
    a = ns.alphas_cumprod.sqrt()
    a = (a - a[-1]) * a[0] / (a[0] - a[-1])
    ac = a**2
    ac[-1] = 4.8973451890853435e-08
    return NoiseSchedule(ac)


def _flow_sigma(progress: float, shift: float = 3.0) -> float:
    """SD3's ComfyUI percent_to_sigma: time_snr_shift(shift, 1 − π)."""
    t = 1.0 - progress
    return shift * t / (1 + (shift - 1) * t)


def _flux_sigma(progress: float, mu: float = 1.15) -> float:
    """Flux's ComfyUI percent_to_sigma: flux_time_shift(μ, 1, 1 − π)."""
    t = 1.0 - progress
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


ZSNR = _zero_snr(NoiseSchedule.scaled_linear())
FAMILIES = {  # name: (sampling, π -> σ of the family's own schedule)
    "sd1.x/sdxl eps": ("eps", NoiseSchedule.scaled_linear().percent_to_sigma),
    "v-prediction zero-SNR": ("v_prediction", ZSNR.percent_to_sigma),
    "sd3 flow (shift 3)": ("const", _flow_sigma),
    "flux flow": ("const", _flux_sigma),
}


class _Toy:
    """A differentiable decoder + classifier and a family's denoiser, in float64 (exact finite differences)."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.decoder = torch.nn.Conv2d(4, 3, 1).double()
        self.mix = torch.nn.Conv2d(4, 4, 3, padding=1).double()
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5)).double()
        self.target = torch.tensor([1, 3])

    def decode(self, z):
        return torch.sigmoid(self.decoder(z))

    def classify(self, image):
        return self.head(image)

    def denoiser(self, sampling: str, sigma: float):
        """D(x, σ): the posterior mean of x0 ~ N(0, I) under the family's noising, plus a small nonlinear part."""
        if sampling == "const":
            c = (1 - sigma) / ((1 - sigma) ** 2 + sigma**2)
        else:
            c = 1 / (1 + sigma**2)
        return lambda x: c * x + 0.1 * torch.tanh(self.mix(x))

    def log_p(self, x0: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(self.classify(self.decode(x0)), -1)
        return logp[torch.arange(len(x0)), self.target].sum()


def _fd_grad(f, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    g = torch.zeros_like(x)
    flat = g.view(-1)
    with torch.no_grad():
        for i in range(x.numel()):
            e = torch.zeros_like(x).view(-1)
            e[i] = h
            e = e.view_as(x)
            flat[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def _one_step(toy: _Toy, sampling: str, sigma: float, progress: float, x: torch.Tensor, **fields):
    """One guided evaluation at (σ, π): x̂0 = D(x, σ), then Guide.refine. Returns x̂0, x̂0', w [B]."""
    schedule = Schedule.from_preset("classifier-all-steps", **fields)
    guide = Guide(schedule, toy.classify, toy.decode, toy.target, sampling=sampling)
    denoise = toy.denoiser(sampling, sigma)
    with torch.no_grad():
        x0 = denoise(x)
    plan = guide.plan(sigma, progress, index=0)
    out = guide.refine(x0, plan, x, denoise) if schedule.grad_through_denoiser else guide.refine(x0, plan)
    return x0, out, torch.tensor(guide.trace.steps[-1].classifier_scale, dtype=torch.float64)


def test_sampling_names_are_checked():
    for f in (ve_sigma, gradient_factor):
        with pytest.raises(ValueError, match="sampling = 'flow'"):
            f(0.5, "flow")
    with pytest.raises(ValueError, match="choose one of"):
        guidance_sigma(0.5, "edm", 0.5)


def test_ve_level_and_gradient_factor_of_a_flow_model():
    """x = (1 − σ)·x0 + σ·ε is the VE x̃ = x/(1 − σ) = x0 + s·ε, s = σ/(1 − σ); ∇_x̃ f = (1 − σ)·∇_x f."""
    sigma = 0.6
    assert ve_sigma(sigma, "const") == pytest.approx(1.5)
    assert ve_sigma(sigma, "eps") == ve_sigma(sigma, "v_prediction") == sigma
    assert ve_sigma(1.0, "const") == math.inf
    x0, eps = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    x = (1 - sigma) * x0 + sigma * eps
    torch.testing.assert_close(x / (1 - sigma), x0 + ve_sigma(sigma, "const") * eps)
    w = torch.randn(8, dtype=torch.float64)
    x = x.clone().requires_grad_(True)
    (g_x,) = torch.autograd.grad((w * torch.sin(x / (1 - sigma))).sum(), x)  # f(x̃), differentiated on x
    torch.testing.assert_close(gradient_factor(sigma, "const") * g_x, w * torch.cos(x.detach() / (1 - sigma)))
    assert gradient_factor(sigma, "eps") == gradient_factor(sigma, "v_prediction") == 1.0


@pytest.mark.parametrize("spacing", ["ddim", "karras", "uniform"])
def test_sd_schedule_keeps_its_own_sigma_bit_for_bit(spacing):
    """SD 1.x / SDXL (eps or v): σ_g is σ itself, both for the float64 table of the core backends and for
    ComfyUI's float32 table (its π computed from that table, as the guider does)."""
    ref = NoiseSchedule.scaled_linear()
    comfy_table = NoiseSchedule(1.0 / (1.0 + ref.sigmas.float().double() ** 2))
    for ns in (ref, comfy_table):
        for s in ns.sample_sigmas(30, spacing)[:-1].tolist():
            for sampling in ("eps", "v_prediction"):
                assert guidance_sigma(s, sampling, ns.sigma_to_percent(s)) == s
    assert guidance_sigma(0.0, "eps", 1.0) == 0.0
    for s in (0.01, 20.0):  # custom sigmas beyond the table's ends (π 1 or 0): σ itself, as before
        assert guidance_sigma(s, "eps", ref.sigma_to_percent(s)) == s
    # a flow model's σ is never taken as a VE σ, even where the numbers happen to agree
    s = 0.5
    assert guidance_sigma(s, "const", ref.sigma_to_percent(s)) == pytest.approx(s, rel=1e-6)
    assert guidance_sigma(0.6, "const", 0.7) == pytest.approx(ref.percent_to_sigma(0.7))


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("through", [False, True])
def test_classifier_step_equals_the_derivation_by_finite_differences(sampling, through):
    """One step, unnormalised gradient (grad_norm identity, so every factor shows):
    on x̂0:                 x̂0' − x̂0 = w·σ_g²·∇_x̂0 log p(y | decode(x̂0))
    through the denoiser:  x̂0' − x̂0 = w·σ_g²·∂x/∂x̃·∇_x log p(y | decode(D(x, σ)))   (∂x/∂x̃ = 1 − σ for const)
    with ∇ taken by central finite differences, independently of autograd."""
    toy = _Toy()
    progress = 0.8
    sigma = _flow_sigma(progress) if sampling == "const" else NoiseSchedule.scaled_linear().percent_to_sigma(progress)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x0, out, w = _one_step(toy, sampling, sigma, progress, x, grad_norm="identity", classifier_scale=2.0,
                           grad_through_denoiser=through)
    denoise = toy.denoiser(sampling, sigma)
    if through:
        g = gradient_factor(sigma, sampling) * _fd_grad(lambda z: toy.log_p(denoise(z)), x)
    else:
        g = _fd_grad(toy.log_p, x0)
    sg = guidance_sigma(sigma, sampling, progress)
    assert (w == 2.0).all()
    torch.testing.assert_close(out - x0, w.view(-1, 1, 1, 1) * sg**2 * g, rtol=1e-6, atol=1e-9)
    if sampling == "const":
        assert sg == pytest.approx(reference_sigma(progress)) and sg != pytest.approx(sigma, rel=0.01)


@pytest.mark.parametrize("progress", [0.7, 0.8, 0.9, 0.95])
def test_same_classifier_scale_same_push_of_x0_at_equal_progress(progress):
    """At equal π the RMS change of x̂0 per unit classifier_scale agrees within 10 % across SD 1.x/SDXL eps,
    zero-SNR v-prediction, SD3 and Flux flow models (grad_norm rms, each at its own σ of π). The VE level
    alone (Tweedie's s²) would not: it is why σ_g is anchored on π."""
    toy = _Toy()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    pushes, tweedie = {}, {}
    for name, (sampling, sigma_of) in FAMILIES.items():
        sigma = sigma_of(progress)
        x0, out, w = _one_step(toy, sampling, sigma, progress, x)
        rms = (out - x0).flatten(1).pow(2).mean(1).sqrt()
        pushes[name] = (rms / w).tolist()
        tweedie[name] = ve_sigma(sigma, sampling) ** 2
    flat = [v for vs in pushes.values() for v in vs]
    assert max(flat) / min(flat) <= 1.10, pushes
    assert min(flat) == pytest.approx(reference_sigma(progress) ** 2, rel=1e-3)
    if progress <= 0.8:
        assert max(tweedie.values()) / min(tweedie.values()) > 1.5, tweedie
