"""The HiGFA guider on every model family (in-process, tiny random-init stand-ins of tests/comfyui/tiny_families.py):
SD 1.x EPS (the reference), SDXL (EPS), SD 1.x v-prediction and SD3 (flow matching, CONST); Flux (guidance-distilled
flow) at CFG 1 in its own test. For each: the `cfg` and `contour` presets equal stock sampling bit for bit,
`higfa` runs with a classifier and the family's ControlNet, the trace's π and stage boundary are where ComfyUI's
own percent_to_sigma puts them, the classifier step is w·σ_g²·normalise(g) with σ_g of the family
(higfa.families), also by finite differences, and the family's TAESD guides. Across families (and zero-SNR
v-prediction by the stock ModelSamplingDiscrete node), one classifier_scale moves x̂0 by the same RMS at equal π."""

from __future__ import annotations

import pytest
import torch

from comfy_helpers import IMAGE, make_classifier
from guider_support import canny_contour, spy_refine

pytestmark = pytest.mark.comfyui
STEPS = 8
FAMILIES = ("sd1", "sdxl", "sd1_vpred", "sd3")


@pytest.fixture(scope="module")
def shared(comfy):
    """A loaded tiny classifier and a contour image (shared by every family)."""
    import folder_paths

    pack = comfy.pack
    make_classifier(comfy.tmp / "classifiers-families" / "tiny.safetensors")
    folder_paths.add_model_folder_path("classifiers", str(comfy.tmp / "classifiers-families"))
    with torch.inference_mode():
        contour = canny_contour(pack)
        clf = pack.nodes.classifier.HiGFAClassifierLoader.execute("tiny.safetensors").args[0]
    return dict(pack=pack, clf=clf, contour=contour)


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, shared):
    import comfy.samplers as cs
    import tiny_families

    with torch.inference_mode():
        f = tiny_families.family(request.param)
    ms = f.model.get_model_object("model_sampling")
    noise = torch.randn(2, f.channels, IMAGE // 8, IMAGE // 8, generator=torch.Generator().manual_seed(0))
    sigmas = cs.calculate_sigmas(ms, "simple", STEPS).cpu()
    return dict(shared, f=f, ms=ms, noise=noise, sigmas=sigmas, name=request.param)


def run(w, guider, batch=2):
    import comfy.samplers as cs

    with torch.inference_mode():
        return guider.sample(w["noise"][:batch], torch.zeros_like(w["noise"][:batch]), cs.sampler_object("euler"),
                             w["sigmas"], disable_pbar=True, seed=0)


def guider(w, preset, target="1", guidance_vae=None, **kw):
    f = w["f"]
    sched = w["pack"].nodes.schedule.build_schedule(preset, **kw)
    control = sched.uses_contour
    return w["pack"].nodes.guider.build_guider(f.model, f.positive, f.negative, sched,
                                               f.control_net if control else None,
                                               w["contour"] if control else None, f.vae, w["clf"], target,
                                               guidance_vae)


def stock(w, contour=None, cfg=7.5):
    import comfy.samplers as cs
    import nodes

    f = w["f"]
    pos, neg = f.positive, f.negative
    if contour is not None:
        with torch.inference_mode():
            pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, f.control_net, w["contour"], contour,
                                                                        0.0, 1.0, vae=f.vae)
    g = cs.CFGGuider(f.model)
    g.set_conds(pos, neg)
    g.set_cfg(cfg)
    return g


def test_cfg_and_contour_presets_are_bit_identical_to_stock_sampling(fam):
    ours = guider(fam, "cfg")
    plain = run(fam, stock(fam))
    assert torch.equal(run(fam, ours), plain)
    assert ours.guide.sampling == fam["f"].sampling
    with_contour = run(fam, guider(fam, "contour"))
    assert torch.equal(with_contour, run(fam, stock(fam, contour=0.75)))
    assert not torch.equal(with_contour, plain)  # the family's ControlNet does act


def test_higfa_runs_with_a_classifier(fam):
    g = guider(fam, "higfa", target="1")  # the tiny classifier is unsure of class 1: full guidance
    out = run(fam, g)
    assert torch.isfinite(out).all()
    assert g.guide.sampling == fam["f"].sampling
    summary = g.guide.trace.summary()
    assert summary["stage2_evaluations"] > 0 and summary["guided_sample_steps"] > 0
    assert not torch.equal(out, run(fam, guider(fam, "contour")))  # the classifier changed the result
    rows = [r for r in g.guide.trace.steps if r.stage == 2]
    assert all(r.confidence is not None and all(0 <= p <= 1 for p in r.confidence) for r in rows)


def test_the_all_in_one_sampler_node_runs_the_family(fam):
    """HiGFA Sampler (KSampler-like) on an empty latent of the family's width: its trace has one row per step."""
    import json

    f, pack = fam["f"], fam["pack"]
    with torch.inference_mode():
        out = pack.nodes.sampler.HiGFASampler.execute(
            f.model, f.positive, f.negative, pack.nodes.schedule.build_schedule("higfa"),
            {"samples": torch.zeros(1, f.channels, IMAGE // 8, IMAGE // 8)}, 5, STEPS, "euler", "simple", 1.0,
            f.control_net, fam["contour"], f.vae, fam["clf"], "class_1")
    latent, _, text = out.args
    trace = json.loads(text)
    assert latent["samples"].shape == (1, f.channels, IMAGE // 8, IMAGE // 8)
    assert torch.isfinite(latent["samples"]).all()
    assert trace["summary"]["steps"] == STEPS and trace["summary"]["guided_sample_steps"] > 0


def test_trace_progress_and_stage_boundary_follow_comfyuis_percent(fam):
    """π of every row is the noise-level percent of its σ by the model's own percent_to_sigma (a flow model's
    σ→π differs from SD's), and stage 2 starts at the first σ at or below percent_to_sigma(π_c)."""
    pi_c = 0.6
    g = guider(fam, "higfa", stage_boundary=pi_c)
    run(fam, g, batch=1)
    rows, ms = g.guide.trace.steps, fam["ms"]
    assert [r.sigma for r in rows] == pytest.approx(fam["sigmas"][:-1].tolist(), rel=1e-6)
    for r in rows:
        if r.progress <= 0.0:  # the top of the schedule: ComfyUI's percent_to_sigma(0) is a sentinel there
            assert r.sigma >= float(ms.sigma_max) * (1 - 1e-6)
        else:
            assert ms.percent_to_sigma(r.progress) == pytest.approx(r.sigma, rel=1e-4)
        assert r.stage == (2 if r.progress >= pi_c else 1)
    boundary = ms.percent_to_sigma(pi_c)
    first = next(i for i, r in enumerate(rows) if r.stage == 2)
    assert 0 < first and rows[first].sigma <= boundary < rows[first - 1].sigma


def test_classifier_step_is_the_family_formula(fam):
    """On every guided step x̂0' − x̂0 = w·σ_g²·g/rms(g), g = ∇_x̂0 log p recomputed through the guider's own
    decoder and classifier, σ_g = guidance_sigma(σ, family, π): σ itself for SDXL and SD 1.x v-prediction (the
    SD table), the SD table's σ at the same π for the flow model."""
    from higfa_pack.higfa.families import guidance_sigma, reference_sigma
    from higfa_pack.higfa.guidance import measure, normalise

    g = guider(fam, "classifier-all-steps", target="1")
    target, seen = torch.tensor([1]), []
    refine = g.guide.refine

    def spy(x0, plan, *a, **k):  # the gradient by the guider's own decoder and classifier, at this x̂0
        grad = measure(x0, g._decode, g._classify, target, grad=True).g
        out = refine(x0, plan, *a, **k)
        seen.append((x0.clone(), out.clone(), plan, grad))
        return out

    g.guide.refine = spy
    run(fam, g, batch=1)
    assert len(seen) == STEPS
    for (x0, out, plan, grad), row in zip(seen, g.guide.trace.steps):
        sg = guidance_sigma(plan.sigma, fam["f"].sampling, plan.progress)
        if fam["f"].sampling == "const":
            assert sg == pytest.approx(reference_sigma(plan.progress)) and sg > plan.sigma
        else:
            assert sg == plan.sigma
        want = row.classifier_scale[0] * sg**2 * normalise(grad)
        ulp = float(x0.abs().max()) * 2.0**-23  # out − x0 cancels: float32 rounding of x̂0 itself
        torch.testing.assert_close(out - x0, want, rtol=1e-4, atol=2 * ulp + 1e-6 * sg**2)


def test_classifier_step_by_finite_differences(fam):
    """One guided step (mid-run) against central finite differences of log p(y | decode(x̂0)), in float64 copies
    of the guider's own decoder and classifier, independent of autograd: the step's RMS is w·σ_g², and its
    direction ĝ = (x̂0' − x̂0)/(w·σ_g²) predicts the derivative of log p along random directions v:
    D_v = rms(g)·⟨ĝ, v⟩, with rms(g) read off the derivative along ĝ itself."""
    finite_difference_check(fam)


def test_flux_classifier_step_by_finite_differences(shared):
    """The same check on the guidance-distilled Flux stand-in, run as docs/method.md says (CFG 1, no ControlNet)."""
    finite_difference_check(flux_scene(shared), cfg=1.0, contour_strength=0.0)


def flux_scene(shared) -> dict:
    import comfy.samplers as cs
    import tiny_families

    with torch.inference_mode():
        f = tiny_families.family("flux")
    ms = f.model.get_model_object("model_sampling")
    return dict(shared, f=f, ms=ms, noise=torch.randn(1, 16, IMAGE // 8, IMAGE // 8,
                                                      generator=torch.Generator().manual_seed(0)),
                sigmas=cs.calculate_sigmas(ms, "simple", STEPS).cpu())


def finite_difference_check(fam, **schedule):
    import copy

    from higfa_pack.higfa.families import guidance_sigma

    g = guider(fam, "classifier-all-steps", target="1", **schedule)
    found, refine = {}, g.guide.refine

    def spy(x0, plan, *a, **k):
        out = refine(x0, plan, *a, **k)
        if plan.index == STEPS // 2:
            decoder, classifier = g._copies(x0)[:2]
            with torch.inference_mode(False):
                decoder, classifier = copy.deepcopy(decoder).double(), copy.deepcopy(classifier).double()
            latent_out = g.inner_model.process_latent_out

            def log_p(z):
                return torch.log_softmax(classifier((decoder.decode(latent_out(z)) + 1) / 2), -1)[0, 1]

            found.update(x0=x0.clone().double(), delta=(out - x0).double(), plan=plan, log_p=log_p)
        return out

    g.guide.refine = spy
    run(fam, g, batch=1)
    plan, x0, delta = found["plan"], found["x0"], found["delta"]
    w = g.guide.trace.steps[plan.index].classifier_scale[0]
    sg2 = guidance_sigma(plan.sigma, fam["f"].sampling, plan.progress) ** 2
    assert float(delta.pow(2).mean().sqrt()) == pytest.approx(w * sg2, rel=1e-3)
    unit = delta / (w * sg2)

    def derivative(v):
        h = 1e-4 * max(1.0, float(x0.abs().max()))
        with torch.inference_mode(False), torch.no_grad():
            return float(found["log_p"](x0 + h * v) - found["log_p"](x0 - h * v)) / (2 * h)

    rms_g = derivative(unit / unit.norm()) / float(unit.norm())
    assert rms_g > 0  # the step climbs log p
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        v = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        v = v / v.norm()
        assert derivative(v) == pytest.approx(rms_g * float((unit * v).sum()), abs=2e-3 * rms_g * float(unit.norm()))


def test_the_familys_taesd_from_the_stock_vae_loader_guides(fam, comfy):
    """taesdxl / taesd / taesd3 in their own file format (models/vae_approx), loaded by the stock VAE Loader,
    as the classifier path's guidance_vae: the run guides and its trace names the decoder."""
    import folder_paths
    import nodes
    import tiny_families

    name, channels = tiny_families.TAESD[fam["name"]]
    folder = comfy.tmp / "vae_approx_families"
    tiny_families.write_taesd(folder, name, channels)
    folder_paths.add_model_folder_path("vae_approx", str(folder))
    with torch.inference_mode():
        assert name in nodes.VAELoader.vae_list(nodes.VAELoader)
        taesd = nodes.VAELoader().load_vae(name)[0]
    g = guider(fam, "higfa", guidance_vae=taesd)
    out = run(fam, g)
    assert torch.isfinite(out).all()
    assert g.guide.trace.guidance_decoder == "guidance_vae (TAESD)"
    assert g.guide.trace.summary()["guided_sample_steps"] > 0
    assert not torch.equal(out, run(fam, guider(fam, "higfa")))  # a different decoder guided


def test_guidance_distilled_flux_at_cfg_1(shared, comfy):
    """Flux.1-dev-class (CONST, ModelSamplingFlux, FluxGuidance's value in the conditioning), as docs/method.md
    says to run it: every text scale of the schedule at 1 (no unconditional pass; the distilled guidance stays
    FluxGuidance's). The cfg preset is then stock sampling bit for bit, and classifier guidance (decoded by taef1
    from the stock VAE Loader) steps by the SD table's σ at each π, with π by ModelSamplingFlux's percent."""
    import folder_paths
    import nodes
    import tiny_families
    from higfa_pack.higfa.families import reference_sigma

    w = flux_scene(shared)
    ms = w["ms"]
    assert torch.equal(run(w, guider(w, "cfg", cfg=1.0)), run(w, stock(w, cfg=1.0)))

    folder = comfy.tmp / "vae_approx_families"
    tiny_families.write_taesd(folder, "taef1", 16)
    folder_paths.add_model_folder_path("vae_approx", str(folder))
    with torch.inference_mode():
        taef1 = nodes.VAELoader().load_vae("taef1")[0]
    g = guider(w, "custom", guidance_vae=taef1, cfg=1.0, cfg_lowconf=1.0, cfg_highconf=1.0, contour_strength=0.0,
               contour_lowconf=0.0, contour_highconf=0.0, stage_boundary=0.5)
    steps = spy_refine(g.guide)
    assert torch.isfinite(run(w, g)).all() and g.guide.sampling == "const"
    rows = g.guide.trace.steps
    assert {r.cfg for r in rows} == {1.0} and g.guide.trace.summary()["guided_sample_steps"] > 0
    for (x0, out, plan), row in zip(steps, rows):
        if plan.progress > 0:
            assert ms.percent_to_sigma(plan.progress) == pytest.approx(plan.sigma, rel=1e-4)
        assert row.stage == (2 if plan.progress >= 0.5 else 1)
        if row.classifier_scale[0] > 0:
            rms = float((out - x0).pow(2).mean().sqrt())
            assert rms == pytest.approx(row.classifier_scale[0] * reference_sigma(plan.progress) ** 2, rel=1e-3)


CROSS = ("sd1", "sdxl", "sd1_vpred", "sd1_vpred_zsnr", "sd3", "flux")
PROGRESS = (0.6, 0.7, 0.8, 0.9, 0.95)


def test_one_classifier_scale_moves_x0_alike_at_equal_progress_across_families(shared):
    """Issue 26's acceptance: at equal π, one classifier step changes x̂0 (the clean-image estimate the step acts
    on) by the same RMS per unit classifier_scale, within 10 %, in every family: SD 1.x EPS, SDXL, SD 1.x
    v-prediction, zero-SNR v-prediction (the stock ModelSamplingDiscrete node), SD3 and Flux, each sampled by
    ComfyUI at σ = its own percent_to_sigma(π). Up to π 0.8 the families' own Tweedie steps σ_VE² differ by
    over 1.5× at the same π: the check fails if σ_g follows the model's σ instead of π."""
    import tiny_families
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete
    from higfa_pack.higfa.families import ve_sigma

    pushes, tweedie = {}, {}
    for name in CROSS:
        with torch.inference_mode():
            f = tiny_families.family(name.removesuffix("_zsnr"))
            if name.endswith("_zsnr"):
                f.model = ModelSamplingDiscrete().patch(f.model, "v_prediction", True)[0]
        ms = f.model.get_model_object("model_sampling")
        sigmas = torch.tensor([float(ms.percent_to_sigma(p)) for p in PROGRESS] + [0.0])
        noise = torch.randn(1, f.channels, IMAGE // 8, IMAGE // 8, generator=torch.Generator().manual_seed(0))
        w = dict(shared, f=f, noise=noise, sigmas=sigmas)
        g = guider(w, "classifier-all-steps", cfg=1.0, contour_strength=0.0)  # Flux has no ControlNet
        steps = spy_refine(g.guide)
        assert torch.isfinite(run(w, g, batch=1)).all()
        assert [plan.progress for _, _, plan in steps] == pytest.approx(PROGRESS, abs=1e-3)
        pushes[name] = [float((out - x0).pow(2).mean().sqrt()) / row.classifier_scale[0]
                        for (x0, out, _), row in zip(steps, g.guide.trace.steps)]
        tweedie[name] = [ve_sigma(float(s), f.sampling) ** 2 for s in sigmas[:-1]]
    for i, progress in enumerate(PROGRESS):
        at = {name: push[i] for name, push in pushes.items()}
        assert max(at.values()) / min(at.values()) <= 1.10, (progress, at)
        own = [t[i] for t in tweedie.values()]
        assert progress > 0.8 or max(own) / min(own) > 1.5, (progress, tweedie)


def test_sdxl_decoder_overflowing_in_fp16_is_caught_by_the_float32_fallback(shared):
    """SDXL's VAE overflows in fp16. Stand-in: a tiny SDXL-family VAE whose decoder activations exceed fp16's
    range (conv_in ×1e5), on the classifier path in fp16 autocast (what precision "auto" picks on a GPU without
    bf16; forced here, the CPU's "auto" is fp32). Every non-finite pass is redone in float32, so the run is the
    float32 run bit for bit and no step loses its guidance to the NaN guard."""
    import tiny_families

    with torch.inference_mode():
        f = tiny_families.family("sdxl")
        hot = tiny_families._vae(9, 4)
        hot.first_stage_model.decoder.conv_in.weight.mul_(1e5)
    ms = f.model.get_model_object("model_sampling")
    import comfy.samplers as cs

    w = dict(shared, f=f, noise=torch.randn(1, 4, IMAGE // 8, IMAGE // 8, generator=torch.Generator().manual_seed(0)),
             sigmas=cs.calculate_sigmas(ms, "simple", STEPS).cpu())
    outs = {}
    for precision in ("fp16", "fp32"):
        g = guider(w, "classifier-all-steps", guidance_vae=hot)
        g.guide.precision = precision
        outs[precision] = run(w, g)
        rows = g.guide.trace.steps
        assert not any(any(r.nan_skipped) for r in rows) and all(r.classifier_scale[0] > 0 for r in rows)
        fallbacks = g.guide.costs.autocast_fallbacks
        assert fallbacks == (len(rows) if precision == "fp16" else 0)
    assert torch.equal(outs["fp16"], outs["fp32"])


def test_a_model_sampling_of_no_known_family_is_refused_by_name(shared):
    """A model whose model_sampling is none of EPS / V_PREDICTION / EDM / X0 / IMG_TO_IMG / COSMOS_RFLOW / CONST
    (here a bare sigma table) cannot take the classifier step: a clear error naming the model; without the
    classifier it samples as usual."""
    import comfy.model_sampling
    import tiny_families

    with torch.inference_mode():
        f = tiny_families.family("sd1_vpred")
    ms = comfy.model_sampling

    class OddSampling(ms.ModelSamplingDiscrete):  # noises like EPS, but is none of ComfyUI's sampling classes
        calculate_input, calculate_denoised = ms.EPS.calculate_input, ms.EPS.calculate_denoised
        noise_scaling, inverse_noise_scaling = ms.EPS.noise_scaling, ms.EPS.inverse_noise_scaling

    f.model = f.model.clone()
    f.model.add_object_patch("model_sampling", OddSampling())
    w = dict(shared, f=f, noise=torch.randn(1, 4, IMAGE // 8, IMAGE // 8, generator=torch.Generator().manual_seed(0)),
             sigmas=torch.tensor([14.6, 2.0, 0.5, 0.0]))
    assert torch.isfinite(run(w, guider(w, "cfg"))).all()
    with pytest.raises(ValueError, match=r"model: its sampling \(OddSampling \+ ModelSamplingDiscrete\) is none"):
        run(w, guider(w, "classifier-all-steps"))
