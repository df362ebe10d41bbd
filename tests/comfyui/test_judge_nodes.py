"""The judge in ComfyUI (issue 25): HiGFA Guider / Sampler's optional `judge` input (appended last), the
HiGFA Confidence Filter node, the interruption check inside the guide's inner loop; in-process with tiny
ComfyUI objects (as test_guider.py), and one judged prompt on the real server."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from before_judge import before_judge_guide, trace_bytes
from comfy_helpers import CLASSES, IMAGE, make_image
from guider_support import reference_sample, tiny_scene

pytestmark = pytest.mark.comfyui
STEPS = 8


@pytest.fixture(scope="module")
def w(comfy):
    """Tiny MODEL/VAE/CONTROL_NET, prompts, a contour, a guide sure of class_0 and a judge sure of class_1."""
    return tiny_scene(comfy, STEPS, "judge_classifiers", {"guide": 0, "judge": 1})


def schedule(w, preset="higfa", **kw):
    return w["pack"].nodes.schedule.build_schedule(preset, **kw)


def guider(w, sched, judge=None, target="class_1"):
    return w["pack"].nodes.guider.build_guider(w["model"], w["pos"], w["neg"], sched, w["cnet"], w["contour"],
                                               w["vae"], w["guide"], target, None, judge)


def run(w, g, sampler="euler", batch=2):
    import comfy.samplers as cs

    with torch.inference_mode():
        return g.sample(w["noise"][:batch], w["latent"][:batch], cs.sampler_object(sampler), w["sigmas"],
                        disable_pbar=True, seed=0)


def test_judge_is_the_last_input_of_guider_and_sampler(w):
    """Saved workflows keep their links: every input the nodes had keeps its place, `judge` comes last."""
    nodes = w["pack"].nodes
    before = {"HiGFA_Guider": ["model", "positive", "negative", "schedule"],
              "HiGFA_Sampler": ["model", "positive", "negative", "schedule", "latent_image", "seed", "steps",
                                "sampler_name", "scheduler", "denoise"]}
    shared = ["control_net", "contour", "vae", "classifier", "target", "guidance_vae"]
    for node in (nodes.guider.HiGFAGuider, nodes.sampler.HiGFASampler):
        schema = node.define_schema()
        names = [i.id for i in schema.inputs]
        assert names == before[schema.node_id] + shared + ["judge"]
        judge = schema.inputs[-1]
        assert judge.optional and judge.io_type == "HIGFA_CLASSIFIER" and "did not guide" in judge.tooltip


@pytest.mark.parametrize("preset", ["higfa", "higfa-robust"])
def test_without_a_judge_the_guider_is_bit_identical_to_before(w, preset, monkeypatch):
    """The ComfyUI guider without a judge, with today's Guide and with the Guide before the judge (the frozen
    copies tests/test_judge.py compares the core with): same latents, same trace JSON bytes."""
    before = before_judge_guide()

    class Before(before):  # the guider passes the new keywords; the old Guide never had them
        def __init__(self, *args, judge=None, judge_target=None, judge_name=None, interrupt=None, **kw):
            assert judge is None
            super().__init__(*args, **kw)

    sched = schedule(w, preset, stage_boundary=0.3)
    monkeypatch.setattr(w["pack"].nodes.cfg_guider, "Guide", Before)
    old = guider(w, sched, target="class_2")
    a = run(w, old)
    monkeypatch.undo()
    new = guider(w, sched, target="class_2")
    b = run(w, new)
    assert type(old.guide) is Before and type(new.guide) is not Before
    assert torch.equal(a, b) and trace_bytes(old.guide.trace) == trace_bytes(new.guide.trace)
    assert new.guide.trace.summary()["guided_sample_steps"] > 0


def test_a_sure_judge_gates_where_the_guide_would_guide(w):
    sched = schedule(w)
    alone, judged = guider(w, sched), guider(w, sched, w["judge"])
    a, b = run(w, alone), run(w, judged)
    ra = [r for r in alone.guide.trace.steps if r.stage == 2]
    rb = [r for r in judged.guide.trace.steps if r.stage == 2]
    assert ra and all(r.confidence[0] < 0.5 and not any(r.gated) for r in ra)  # the guide alone: unsure, guides
    assert all(r.gated == [True, True] and r.judge_confidence[0] > 0.9 for r in rb)  # the judge: sure, gates
    assert all(r.confidence == pytest.approx(x.confidence, abs=1e-6) for r, x in zip(rb[:1], ra[:1]))
    assert alone.guide.trace.summary()["guided_sample_steps"] > 0 == judged.guide.trace.summary()["guided_sample_steps"]
    assert not torch.equal(a, b)
    trace = judged.guide.trace.to_dict()
    assert trace["judge"] == "judge.safetensors" and trace["summary"]["fooling_gap"][0] < -0.4
    assert judged._grad is None  # the judge's device copy is dropped with the others after the run


def test_the_guide_as_its_own_judge_gives_the_same_images(w):
    sched = schedule(w, "higfa", stage_boundary=0.3)
    alone, itself = guider(w, sched), guider(w, sched, w["guide"])
    assert torch.equal(run(w, itself), run(w, alone))
    rows = [r for r in itself.guide.trace.steps if r.confidence is not None]
    assert rows and all(r.judge_confidence == r.confidence for r in rows)


def test_the_judge_is_matched_by_class_name(w):
    """A judge whose classes come in another order is asked about the same class (by name)."""
    clf = copy.deepcopy(w["judge"])
    order = [2, 3, 1, 0]  # new index i holds old class order[i]
    with torch.inference_mode(False), torch.no_grad():
        fc = clf.model.fc
        fc.weight.copy_(fc.weight[order])
        fc.bias.copy_(fc.bias[order])
    clf.class_names = [CLASSES[i] for i in order]
    g = guider(w, schedule(w), clf)
    assert g.guide.judge_target.tolist() == [2]  # class_1 is the reordered judge's index 2
    run(w, g, batch=1)
    rows = [r for r in g.guide.trace.steps if r.judge_confidence is not None]
    assert rows and all(r.judge_confidence[0] > 0.9 for r in rows)
    other = copy.deepcopy(w["judge"])
    other.class_names = ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="the target class 'class_1' is not one of the judge's classes"):
        guider(w, schedule(w), other)


def test_agrees_with_the_core_reference_sampler_with_a_judge(w):
    """As test_guider's agreement test, with a judge: the ComfyUI guider and higfa.sampler.sample inside
    ComfyUI's sampling context give the same trace (the judge's p included) and close latents."""

    pack = w["pack"]
    sched = schedule(w, "higfa", stage_boundary=0.3)
    ours = pack.nodes.cfg_guider.HiGFACFGGuider(w["model"], sched, w["pos"], w["neg"], w["cnet"], w["contour"],
                                                w["vae"], w["guide"], [1, 2], None, w["judge"], [1, 2])
    a = run(w, ours)
    b, result = reference_sample(w, sched, w["guide"], [1, 2], CLASSES, judge=w["judge"])
    ra, rb = ours.guide.trace.steps, result.trace.steps
    assert [(r.index, r.stage, r.cfg, r.contour, r.gated) for r in ra] == [
        (r.index, r.stage, r.cfg, r.contour, r.gated) for r in rb]
    judged = [(x, y) for x, y in zip(ra, rb) if x.judge_confidence is not None]
    assert judged and all(x.judge_confidence == pytest.approx(y.judge_confidence, abs=1e-5) for x, y in judged)
    assert any(x.gated[0] and not x.gated[1] for x, _ in judged)  # the judge gates sample 0 (class_1) only
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_interruption_takes_effect_inside_the_inner_loop(w):
    """issue 27 item 6: with many inner iterations, an interrupt sent during a step stops the guide at its next
    inner iteration (ComfyUI's check is passed into the core), not after the step."""
    import comfy.model_management as mm

    g = guider(w, schedule(w, "classifier-all-steps", inner_iterations=8), target="class_2")
    decode, calls = g.guide.decode, []

    def counting(z):
        calls.append(1)
        if len(calls) == 2:  # the second inner iteration of the first step
            mm.interrupt_current_processing(True)
        return decode(z)

    g.guide.decode = counting
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(w, g, batch=1)
    finally:
        mm.interrupt_current_processing(False)
    assert len(calls) == 2 and g.guide.trace.steps == [] and g._grad is None


def test_sampler_node_with_a_judge_returns_both_confidences(w):
    with torch.inference_mode():
        out = w["pack"].nodes.sampler.HiGFASampler.execute(
            w["model"], w["pos"], w["neg"], schedule(w), {"samples": w["latent"][:1]}, 7, STEPS, "ddim",
            "ddim_uniform", 1.0, w["cnet"], w["contour"], w["vae"], w["guide"], "class_1", None, w["judge"])
    trace = json.loads(out.args[2])
    rows = [r for r in trace["steps"] if r["confidence"] is not None]
    assert trace["judge"] and rows and all(len(r["judge_confidence"]) == 1 for r in rows)
    assert out.ui == {"higfa_trace": [trace]}


# ----------------------------------------------------------------------------- HiGFA Confidence Filter
def images(n=4):
    return torch.stack([torch.from_numpy(make_image(20 + i)).float().div(255) for i in range(n)])


def test_confidence_filter_node_is_the_core_filter(w):
    from higfa.judge import confidence_filter

    node = w["pack"].nodes.filter.HiGFAConfidenceFilter
    batch = images()
    with torch.inference_mode():
        kept, text, dropped = node.execute(batch, w["judge"], "class_1", 0.5).args
    core = confidence_filter(batch.movedim(-1, 1), w["judge"], [1] * 4, 0.5)
    assert core.kept == [0, 1, 2, 3] and torch.equal(kept, batch) and dropped.shape == (0, IMAGE, IMAGE, 3)
    assert text.splitlines() == [f"{float(p):.4f}" for p in core.confidence]
    with torch.inference_mode():
        kept, text, dropped = node.execute(batch, w["judge"], "class_1\n3\nclass_1\nclass_0", 0.5).args
    assert torch.equal(kept, batch[[0, 2]]) and torch.equal(dropped, batch[[1, 3]]) and len(text.splitlines()) == 2
    threshold = float(core.confidence.median())
    with torch.inference_mode():
        kept, text, dropped = node.execute(batch, w["judge"], "class_1", threshold).args
    assert kept.shape[0] == sum(float(p) >= threshold for p in core.confidence) and kept.shape[0] + \
        dropped.shape[0] == 4
    assert all(float(t) >= threshold - 1e-4 for t in text.splitlines())


@pytest.mark.parametrize("target, message", [
    ("class_1\nclass_2", "'target' has 2 lines for 4 images"),
    ("heron", "target class 'heron' is not a class of this classifier"),
    ("  \n", "'target' is empty"),
])
def test_confidence_filter_errors_name_the_input(w, target, message):
    with pytest.raises(ValueError, match=message):
        w["pack"].nodes.filter.HiGFAConfidenceFilter.execute(images(), w["judge"], target, 0.5)


# ----------------------------------------------------------------------------- the real server
def test_a_judged_prompt_with_the_filter_runs_on_the_server(server):
    """The shipped higfa preset workflow with its classifier also connected as the judge and a Confidence Filter
    after VAE Decode: the server validates and runs it; the trace carries the judge's p."""
    from workflow_checks import nodes_of, to_test_prompt

    from comfy_helpers import shipped_workflow

    info = server.object_info
    assert "HiGFA_ConfidenceFilter" in info
    assert info["HiGFA_Guider"]["input_order"]["optional"][-1] == "judge"
    prompt = to_test_prompt(shipped_workflow("higfa-preset-higfa"), info, server.next_seed())
    (sampler,) = nodes_of(prompt, "HiGFA_Sampler")
    (loader,) = nodes_of(prompt, "HiGFA_ClassifierLoader")
    (decode,) = nodes_of(prompt, "VAEDecode")
    prompt[sampler]["inputs"]["judge"] = [loader, 0]
    prompt["judge_filter"] = {"class_type": "HiGFA_ConfidenceFilter",
                              "inputs": {"images": [decode, 0], "judge": [loader, 0], "target": "0", "threshold": 0.5}}
    prompt["judge_kept"] = {"class_type": "PreviewImage", "inputs": {"images": ["judge_filter", 0]}}
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"]["messages"])[-3000:]
    trace = entry["outputs"][sampler]["higfa_trace"][0]
    rows = [r for r in trace["steps"] if r["confidence"] is not None]
    assert trace["judge"] and rows and all(r["judge_confidence"] == r["confidence"] for r in rows)
    assert len(entry["outputs"]["judge_kept"]["images"]) == 2  # the classifier is sure of class 0 (make_classifier)


def test_classifier_ensemble_node_guides_as_the_core_ensemble(w):
    """HiGFA Classifier Ensemble (run under inference mode, as ComfyUI runs nodes) gives a guide whose run
    agrees with the core sampler guided by higfa.classifier.ClassifierEnsemble of the same classifiers; its
    log-probabilities are the members' mean; members of other classes are refused with the fix."""
    from higfa.classifier import ClassifierEnsemble

    node = w["pack"].nodes.classifier.HiGFAClassifierEnsemble
    with torch.inference_mode():
        ens, info = node.execute(w["guide"], w["judge"]).args
    assert info.startswith("ensemble of 2: ") and ens.class_names == w["guide"].class_names
    x = torch.rand(2, 3, 32, 32)
    want = (torch.log_softmax(w["guide"](x), -1) + torch.log_softmax(w["judge"](x), -1)) / 2
    torch.testing.assert_close(ens(x).detach(), want.detach())
    sched = schedule(w, "higfa-robust", stage_boundary=0.3)
    ours = w["pack"].nodes.cfg_guider.HiGFACFGGuider(w["model"], sched, w["pos"], w["neg"], w["cnet"], w["contour"],
                                                     w["vae"], ens, [1, 2], None)
    a = run(w, ours)
    b, result = reference_sample(w, sched, ClassifierEnsemble([w["guide"], w["judge"]]), [1, 2], CLASSES)
    ra, rb = ours.guide.trace.steps, result.trace.steps
    guided = [(x, y) for x, y in zip(ra, rb) if x.confidence is not None]
    assert guided and all(x.confidence == pytest.approx(y.confidence, abs=1e-5) for x, y in guided)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    other = copy.deepcopy(w["judge"])
    other.class_names = list(reversed(other.class_names))
    with pytest.raises(ValueError, match="member 2 .* other class names"):
        node.execute(w["guide"], other)
