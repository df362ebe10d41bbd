"""`higfa augment` beyond SD 1.x ε-prediction (issue 26 item 4), on tiny random-init stand-ins in the real formats
(higfa.testing.sdxl, higfa.testing.pipeline_folder):

- SDXL: two text encoders, pooled text + size/crop ids through the UNet's and the ControlNet's added conditioning;
  from a diffusers folder and from a single-file checkpoint (original layout, `from_single_file`); the same
  sampling as diffusers' own `StableDiffusionXLControlNetPipeline`; end to end, killed and resumed byte-identical.
- v-prediction with zero terminal SNR (`rescale_betas_zero_snr`, trailing spacing, as the model's scheduler
  config says): π from σ on the model's own table, the first step at σ = ∞, the classifier step through
  `higfa.families` with sampling "v_prediction" (σ_g = SD's σ at π, not the model's σ); end to end.
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch

from augment_support import (N_ITEMS, finished_records, interrupt, args_for, assert_same_outputs,
                             images, make_world, manifest, reference_run, run_cli, start_augment)
from higfa.trace import Trace

VPRED = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """The augment test world (2-class classifier, 2x2 images) with a tiny SDXL + SDXL ControlNet folder, and the
    same weights as one single-file checkpoint."""
    from higfa.backends.components import load_components
    from higfa.backends.ldm_export import save_single_file_sdxl
    from higfa.testing.sdxl import save_tiny_sdxl_pipeline

    base = tmp_path_factory.mktemp("augment-sdxl")
    world = make_world(base)
    world["model"] = save_tiny_sdxl_pipeline(base / "sdxl")
    c = load_components(world["model"])
    world["single"] = save_single_file_sdxl(base / "tiny-sdxl.safetensors", c.unet, c.vae, c.text_encoder,
                                            c.text_encoder_2)
    return world


@pytest.fixture(scope="module")
def sdxl_reference(sdxl):
    return reference_run(sdxl)


def test_sdxl_single_file_loads_the_folders_weights_and_text_conditioning(sdxl):
    from diffusers import StableDiffusionXLPipeline

    from higfa.backends.components import load_components

    folder = load_components(sdxl["model"])
    single = load_components(sdxl["single"], config=sdxl["model"], controlnet=sdxl["model"] / "controlnet")
    assert folder.is_sdxl and single.is_sdxl and single.text_encoder_2 is not None
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(folder, part).state_dict(), getattr(single, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    tokens, pooled = folder.text_conditioning(["a photo of a bird"])
    assert tokens.shape == (1, 77, 16 + 24) and pooled.shape == (1, 24)
    pipe = StableDiffusionXLPipeline(**{k: getattr(folder, k) for k in ("vae", "text_encoder", "text_encoder_2",
                                                                        "tokenizer", "tokenizer_2", "unet",
                                                                        "scheduler")}, add_watermarker=False)
    want = pipe.encode_prompt("a photo of a bird", do_classifier_free_guidance=False)
    assert torch.equal(tokens, want[0]) and torch.equal(pooled, want[2])


def test_sdxl_sampling_matches_diffusers_controlnet_pipeline(sdxl):
    """The `contour` preset (CFG 7.5, ControlNet 0.75 on every step) through `sample_with_scheduler` with the
    augment job's SDXL conditioning = diffusers' StableDiffusionXLControlNetPipeline on the same noise and hint
    (CFG in ε vs x̂0 space: equal up to float rounding)."""
    from diffusers import StableDiffusionXLControlNetPipeline
    from PIL import Image

    from higfa.backends.components import load_components, sdxl_time_ids
    from higfa.backends.denoiser import sample_with_scheduler
    from higfa.schedule import Schedule

    c = load_components(sdxl["model"], scheduler="euler")
    size, steps = 64, 4
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(0)
    hint_u8 = ((rng.random((size, size)) > 0.8) * 255).astype(np.uint8).repeat(3).reshape(size, size, 3)
    hint = torch.from_numpy(hint_u8).permute(2, 0, 1)[None].float() / 255
    (cond, pooled), (uncond, upooled) = c.text_conditioning(["a red bird"]), c.text_conditioning(["blurry"])
    ids = sdxl_time_ids(size)
    ours = sample_with_scheduler(c.unet, c.scheduler, noise, Schedule.from_preset("contour"),
                                 {"cond": cond, "uncond": uncond}, steps=steps, controlnet=c.controlnet, contour=hint,
                                 added={"cond": {"text_embeds": pooled, "time_ids": ids},
                                        "uncond": {"text_embeds": upooled, "time_ids": ids}}).latent
    pipe = StableDiffusionXLControlNetPipeline(
        **{k: getattr(c, k) for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet",
                                      "controlnet", "scheduler")}, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a red bird", negative_prompt="blurry", image=Image.fromarray(hint_u8), height=size, width=size,
                  num_inference_steps=steps, guidance_scale=7.5, controlnet_conditioning_scale=0.75,
                  latents=noise.clone(), output_type="latent").images
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), float((ours - theirs).abs().max())
    # the added conditioning is used: another size's time ids give another sample
    def cfg_sample(time_ids):
        added = {b: {"text_embeds": p, "time_ids": time_ids} for b, p in (("cond", pooled), ("uncond", upooled))}
        return sample_with_scheduler(c.unet, c.scheduler, noise, Schedule.from_preset("cfg"),
                                     {"cond": cond, "uncond": uncond}, steps=2, added=added).latent

    assert not torch.allclose(cfg_sample(sdxl_time_ids(128)), cfg_sample(ids))


@pytest.mark.slow
def test_sdxl_augment_end_to_end_folder_and_single_file(sdxl, sdxl_reference):
    from higfa.trace import Trace

    out, err = sdxl_reference
    assert f"{N_ITEMS} images written" in err
    recs = manifest(out)
    assert len(recs) == N_ITEMS and all(r["status"] == "ok" and 0 < r["confidence"] < 1 for r in recs)
    assert {np.frombuffer(b, np.uint8).size > 0 for b in images(out).values()} == {True}
    trace = Trace.from_json((out / recs[0]["trace"]).read_text())
    assert trace.summary()["guided_sample_steps"] > 0
    run = json.loads((out / "run.json").read_text())
    assert run["fingerprint"]["model"]["model"] == str(sdxl["model"].resolve())
    single = sdxl["base"] / "single"
    argv = args_for(sdxl, single)
    argv[argv.index("--model") + 1] = str(sdxl["single"])
    rc, err = run_cli(argv + ["--config", sdxl["model"], "--controlnet", sdxl["model"] / "controlnet"])
    assert rc == 0, err
    assert images(single) == images(out)


@pytest.mark.slow
def test_sdxl_augment_killed_then_rerun_ends_byte_identical(sdxl, sdxl_reference, tmp_path):
    out = tmp_path / "out"
    rc, _, _ = interrupt(start_augment(sdxl, out), out, 3, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    kept = finished_records(out)
    assert len(kept) >= 3 and not (out / "manifest.jsonl").exists()
    rc, err = run_cli(args_for(sdxl, out))
    assert rc == 0, err
    assert f"{N_ITEMS - len(kept)} images written" in err and f"{len(kept)} already done" in err
    assert_same_outputs(out, sdxl_reference[0])


def test_zero_snr_v_prediction_guides_by_its_family(tmp_path):
    """A v-prediction zero-SNR scheduler: the first evaluation is at σ = ∞ (π 0), π comes from σ on the model's
    table, and each classifier step moves x̂0 by w·σ_g² (rms-normalised), σ_g = SD's σ at π
    (`higfa.families.guidance_sigma` with "v_prediction"), which differs from the model's own σ there."""
    from higfa.backends.components import make_scheduler
    from higfa.backends.denoiser import noise_schedule_from_scheduler, sample_with_scheduler, vae_decode
    from higfa.families import guidance_sigma, reference_sigma
    from higfa.guide import Guide
    from higfa.schedule import Schedule
    from higfa.testing.pipeline_folder import tiny_components
    from higfa.testing.stand_ins import tiny_classifier

    parts = tiny_components(scheduler_options=VPRED)
    scheduler = make_scheduler(parts["scheduler"].config, "ddim")
    assert scheduler.config.rescale_betas_zero_snr and float(scheduler.alphas_cumprod[-1]) == 0.0
    clf = tiny_classifier(4, 64)
    guide = Guide(Schedule.from_preset("higfa", stage_boundary=0.5, gating=False), clf, vae_decode(parts["vae"]), [1],
                  clf.class_names)
    steps = []
    refine = guide.refine

    def spy(x0, plan, *a, **k):
        new = refine(x0, plan, *a, **k)
        steps.append((x0.clone(), new.clone(), plan))
        return new

    guide.refine = spy
    g = torch.Generator().manual_seed(0)
    emb = {"cond": torch.randn(1, 77, 32, generator=g), "uncond": torch.zeros(1, 77, 32)}
    result = sample_with_scheduler(parts["unet"], scheduler, torch.randn(1, 4, 8, 8, generator=g), guide, emb, steps=6)
    assert torch.isfinite(result.latent).all() and guide.sampling == "v_prediction"
    assert steps[0][2].sigma == float("inf") and steps[0][2].progress == 0.0
    text = result.trace.to_json()  # strict JSON: σ = ∞ is written as null, read back as ∞
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))["steps"][0]["sigma"] is None
    assert Trace.from_json(text).steps[0].sigma == float("inf")
    ns = noise_schedule_from_scheduler(scheduler)
    guided = 0
    for (x0, new, plan), row in zip(steps, result.trace.steps):
        assert plan.progress == pytest.approx(ns.sigma_to_percent(plan.sigma))
        if row.classifier_scale[0] > 0:
            sg = guidance_sigma(plan.sigma, "v_prediction", plan.progress)
            assert sg == pytest.approx(reference_sigma(plan.progress)) and abs(sg - plan.sigma) > 1e-3 * plan.sigma
            rms = float((new - x0).pow(2).mean().sqrt())
            assert rms == pytest.approx(row.classifier_scale[0] * sg**2, rel=1e-3)
            guided += 1
    assert guided >= 2


def test_zero_snr_config_with_a_scheduler_that_ignores_it_is_refused():
    from higfa.backends.components import make_scheduler
    from higfa.testing.pipeline_folder import tiny_scheduler

    config = tiny_scheduler(**VPRED).config
    for name in ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc", "ddpm"):
        assert float(make_scheduler(config, name).alphas_cumprod[-1]) < 1e-6, name
    for name in ("pndm", "heun", "lms"):
        with pytest.raises(ValueError, match=f"scheduler '{name}'.*rescale_betas_zero_snr.*Choose one of ddim"):
            make_scheduler(config, name)
    make_scheduler(tiny_scheduler().config, "pndm")  # without zero SNR every scheduler stays available


@pytest.mark.slow
def test_v_prediction_zero_snr_folder_augment_end_to_end(tmp_path):
    from higfa.testing.pipeline_folder import save_tiny_pipeline
    from higfa.trace import Trace

    world = make_world(tmp_path)
    world["model"] = save_tiny_pipeline(tmp_path / "vpred", scheduler_options=VPRED)
    out = tmp_path / "out"
    rc, err = run_cli(args_for(world, out, "--steps", "5"))  # trailing spacing: π 0, 0.2, ... 0.8 (stage 2 from 0.7)
    assert rc == 0 and f"{N_ITEMS} images written" in err, err
    recs = manifest(out)
    assert all(r["status"] == "ok" for r in recs)
    run = json.loads((out / "run.json").read_text())
    scheduler = run["fingerprint"]["scheduler"][1]
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["rescale_betas_zero_snr"] is True
    trace = Trace.from_json((out / recs[0]["trace"]).read_text())
    assert trace.summary()["guided_sample_steps"] > 0
