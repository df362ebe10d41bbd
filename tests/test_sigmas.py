import numpy as np
import pytest
import torch

from higfa.sigmas import NoiseSchedule


def test_percent_round_trip_and_comfy_convention():
    ns = NoiseSchedule.scaled_linear()
    for pi in np.linspace(0.01, 0.99, 37):
        assert ns.sigma_to_percent(ns.percent_to_sigma(float(pi))) == pytest.approx(pi, abs=1e-9)
    # ComfyUI: percent_to_sigma(p) = sigma((1 - p) * 999); 0.6 -> 1.163 on SD 1.5 (harness.md)
    assert ns.percent_to_sigma(0.6) == pytest.approx(1.163, abs=2e-3)
    assert ns.sigma_to_percent(0.0) == 1.0 and ns.percent_to_sigma(0.0) == float("inf")


def test_ddim_spacing_matches_diffusers():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                          clip_sample=False, set_alpha_to_one=False)
    sched.set_timesteps(30)
    ns = NoiseSchedule(sched.alphas_cumprod)
    sig = ns.sample_sigmas(30, "ddim")
    ts = [round(ns.timestep(float(s))) for s in sig[:-1]]
    assert ts == sched.timesteps.tolist()
    assert sig[-1] == 0 and torch.all(sig[:-1] > sig[1:])


@pytest.mark.parametrize("spacing", ["ddim", "karras", "uniform"])
def test_spacings_descend_and_denoise_truncates(spacing):
    ns = NoiseSchedule.scaled_linear()
    full, part = ns.sample_sigmas(20, spacing), ns.sample_sigmas(10, spacing, denoise=0.5)
    assert len(full) == 21 and len(part) == 11 and torch.all(full[:-1] > full[1:])
    assert part[0] < full[0]


def test_bad_sampling_inputs():
    ns = NoiseSchedule.scaled_linear()
    with pytest.raises(ValueError, match="steps"):
        ns.sample_sigmas(0)
    with pytest.raises(ValueError, match="denoise"):
        ns.sample_sigmas(10, denoise=1.5)
    with pytest.raises(ValueError, match="spacing"):
        ns.sample_sigmas(10, spacing="exponential")
