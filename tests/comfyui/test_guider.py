"""The HiGFA guider inside ComfyUI (in-process, tiny ComfyUI objects built under inference mode as
loader nodes build them): parity with the stock CFG path, agreement with the core reference sampler,
ControlNet handling, gradients under inference mode, interruption, previews, clear errors."""

from __future__ import annotations


import pytest
import torch

from comfy_helpers import CLASSES, IMAGE
from guider_support import reference_sample, stock, tiny_scene

pytestmark = pytest.mark.comfyui
STEPS = 8


@pytest.fixture(scope="module")
def w(comfy):
    """Tiny MODEL/CLIP/VAE/CONTROL_NET, prompts, a contour and a loaded classifier (`clf`)."""
    return tiny_scene(comfy, STEPS, "classifiers", {"clf": 0})


def schedule(w, preset, **kw):
    return w["pack"].nodes.schedule.build_schedule(preset, **kw)


def run(w, guider, sampler="euler", callback=None, batch=2):
    import comfy.samplers as cs

    with torch.inference_mode():
        return guider.sample(w["noise"][:batch], w["latent"][:batch], cs.sampler_object(sampler), w["sigmas"],
                             callback=callback, disable_pbar=True, seed=0)


def guider(w, preset, target="1", control=True, **kw):
    build = w["pack"].nodes.guider.build_guider
    return build(w["model"], w["pos"], w["neg"], schedule(w, preset, **kw), w["cnet"] if control else None,
                 w["contour"] if control else None, w["vae"], w["clf"], target)


def test_cfg_preset_is_bit_identical_to_stock_cfg(w):
    ours = guider(w, "cfg")
    assert torch.equal(run(w, ours), run(w, stock(w)))
    rows = ours.guide.trace.steps
    assert len(rows) == STEPS and {r.stage for r in rows} == {1, 2}
    assert all(r.cfg == 7.5 and r.contour == 0 and r.confidence is None for r in rows)


def test_contour_preset_is_bit_identical_to_stock_controlnet_apply(w):
    ours = guider(w, "contour")
    a = run(w, ours)
    assert torch.equal(a, run(w, stock(w, contour=0.75)))
    assert not torch.equal(a, run(w, stock(w)))  # the ControlNet does change the result


def test_contour_strength_zero_skips_the_controlnet(w):
    """Steps at λ = 0 do not run the ControlNet at all (rather than scaling its output by 0)."""
    calls = []
    own = guider(w, "custom", contour_strength=0.0, contour_lowconf=0.5, contour_highconf=0.5,
                 classifier_steps="off", stage_boundary=0.5)
    for c in own.controls:
        orig = c.get_control
        c.get_control = lambda *a, _o=orig, **k: calls.append(1) or _o(*a, **k)
    run(w, own)
    stages = [r.stage for r in own.guide.trace.steps]
    assert 0 < stages.count(2) < len(stages) and len(calls) == stages.count(2)  # only stage 2 (λ = 0.5) runs it


def test_upstream_controlnets_are_never_mutated(w):
    import nodes

    pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(w["pos"], w["neg"], w["cnet"], w["contour"], 0.4, 0, 1)
    upstream = pos[0][1]["control"]
    g = w["pack"].nodes.guider.build_guider(w["model"], pos, neg, schedule(w, "higfa"), w["cnet"], w["contour"],
                                             w["vae"], w["clf"], "1")
    run(w, g)
    assert upstream.strength == 0.4 and w["cnet"].strength == 1.0
    assert all(c.previous_controlnet is upstream for c in g.controls)  # chained, as ControlNetApplyAdvanced does
    assert {r.contour for r in g.guide.trace.steps} >= {0.75}  # ours did change per step


def test_agrees_with_the_core_reference_sampler(w):
    """The same tiny model driven by higfa.sampler.sample (inside ComfyUI's sampling context, so both
    see identical model calls) and by the HiGFA guider with ComfyUI's euler: same trace, close latents."""

    pack = w["pack"]
    sched = schedule(w, "higfa")
    targets = [0, 1]  # 0: the classifier is confident -> gated; 1: full guidance
    ours = pack.nodes.cfg_guider.HiGFACFGGuider(w["model"], sched, w["pos"], w["neg"], w["cnet"], w["contour"],
                                             w["vae"], w["clf"], targets)
    a = run(w, ours)

    b, result = reference_sample(w, sched, w["clf"], targets, CLASSES)
    ra, rb = ours.guide.trace.steps, result.trace.steps
    assert [(r.index, r.stage, r.cfg, r.contour, r.gated) for r in ra] == [
        (r.index, r.stage, r.cfg, r.contour, r.gated) for r in rb]
    for x, y in zip(ra, rb):
        assert x.progress == pytest.approx(y.progress, abs=1e-9)
        assert (x.confidence is None) == (y.confidence is None)
        if x.confidence is not None:
            assert x.confidence == pytest.approx(y.confidence, abs=1e-5)
            assert x.classifier_scale == pytest.approx(y.classifier_scale, abs=1e-5)
    summary = ours.guide.trace.summary()
    assert summary["stage2_evaluations"] > 0 and summary["guided_sample_steps"] > 0
    assert any(r.gated[0] and not r.gated[1] for r in ra)  # per-sample gating
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.equal(a, run(w, guider(w, "contour")))  # and the classifier did change the result


def test_gradients_under_inference_mode_leave_nothing_behind(w):
    g = guider(w, "classifier-all-steps")
    out = run(w, g)
    assert torch.isfinite(out).all() and not out.requires_grad
    assert g._grad is None  # decoder/classifier copies dropped after the run
    assert not any(p.requires_grad for p in w["clf"].parameters())
    assert all(p.grad is None for p in w["vae"].first_stage_model.parameters())
    rows = g.guide.trace.steps
    assert all(r.confidence is not None and r.grad_norm is not None for r in rows)  # every step guided
    assert not any(any(r.gated) for r in rows)


def test_multi_evaluation_sampler_shares_a_steps_strengths(w):
    g = guider(w, "higfa")
    out = run(w, g, sampler="heun", batch=1)
    rows = g.guide.trace.steps
    assert torch.isfinite(out).all() and len(rows) == 2 * STEPS - 1
    indices = [r.index for r in rows]
    assert indices == sorted(indices) and set(indices) == set(range(STEPS))


def test_interrupt_stops_sampling_and_drops_the_copies(w):
    import comfy.model_management as mm

    g = guider(w, "classifier-all-steps")
    seen = []

    def callback(step, x0, x, total):
        seen.append(step)
        if step == 2:
            mm.interrupt_current_processing(True)

    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(w, g, callback=callback)
    finally:
        mm.interrupt_current_processing(False)
    assert seen == [0, 1, 2] and g._grad is None


def test_sampler_node_reports_progress_per_step_and_returns_the_trace(w, comfy):
    import json

    import comfy.utils

    updates = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        with torch.inference_mode():
            out = w["pack"].nodes.sampler.HiGFASampler.execute(
                w["model"], w["pos"], w["neg"], schedule(w, "higfa"), {"samples": w["latent"][:1]}, 7, STEPS,
                "ddim", "ddim_uniform", 1.0, w["cnet"], w["contour"], w["vae"], w["clf"], "class_1")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    latent, plot, text = out.args
    assert latent["samples"].shape == (1, 4, IMAGE // 8, IMAGE // 8)
    assert plot.ndim == 4 and plot.shape[0] == 1 and plot.shape[-1] == 3
    assert 0 <= float(plot.min()) <= float(plot.max()) <= 1
    trace = json.loads(text)
    assert trace["target"] == [1] and trace["summary"]["steps"] == STEPS
    import comfyui_version

    if comfyui_version.__version__ == "0.3.75":
        assert updates == [(i + 1, STEPS) for i in range(STEPS)]
    else:  # newer ComfyUI (0.33.0) sends the first and the last step and throttles the others by time
        values = [v for v, _ in updates]
        assert {t for _, t in updates} == {STEPS} and values == sorted(set(values))
        assert values[0] == 1 and values[-1] == STEPS
    assert out.ui == {"higfa_trace": [trace]}  # web/higfa_trace.js draws it; the PNG is the trace_plot output


@pytest.mark.parametrize("kwargs, message", [
    (dict(preset="higfa", control=True, clf=None), "classifier is not connected"),
    (dict(preset="contour", control=False), "control_net and contour are not connected"),
    (dict(preset="higfa", target="7"), "out of range: this classifier has 4 classes"),
    (dict(preset="higfa", target="class_9"), "not a class of this classifier"),
    (dict(preset="higfa", schedule={"grad_through_denoiser": True}),
     "'grad_through_denoiser' = True is not supported in ComfyUI"),
])
def test_clear_errors_name_the_input(w, kwargs, message):
    build = w["pack"].nodes.guider.build_guider
    control = kwargs.get("control", True)
    with pytest.raises(ValueError, match=message):
        build(w["model"], w["pos"], w["neg"], schedule(w, kwargs["preset"], **kwargs.get("schedule", {})),
              w["cnet"] if control else None,
              w["contour"] if control else None, w["vae"], kwargs.get("clf", w["clf"]), kwargs.get("target", "0"))


def test_contour_batch_must_match_the_latent_batch(w):
    three = torch.cat([w["contour"]] * 3)
    g = w["pack"].nodes.guider.build_guider(w["model"], w["pos"], w["neg"], schedule(w, "contour"), w["cnet"], three)
    with pytest.raises(ValueError, match="contour has 3 images but the latent batch has 2"):
        run(w, g)
