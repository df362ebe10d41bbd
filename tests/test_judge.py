"""The judge (issue 25): a classifier that did not guide drives the ramp, the gate and measure_every, the
gradient stays the guide's; without a judge every output is bit-identical to the code before the judge;
the trace and its plot carry p_guide and p_judge; the one confidence filter; the interruption hook."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import higfa.sampler as core_sampler
from higfa.guide import Guide
from higfa.judge import confidence_filter, judge_view_seed, map_targets, scores
from higfa.sampler import sample
from higfa.schedule import Schedule
from before_judge import before_judge_guide, trace_bytes
from higfa.testing.stand_ins import Confident
from higfa.trace import Trace

STEPS = 12


@pytest.fixture(scope="module")
def sigmas(tiny_world):
    return tiny_world.noise_schedule.sample_sigmas(STEPS)




def _run(world, sigmas, guide, batch, seed, monkeypatch=None, guide_class=None):
    if guide_class is not None:  # the reference sampler wraps anything that is not its Guide
        monkeypatch.setattr(core_sampler, "Guide", guide_class)
    try:
        return sample(world.denoiser, world.noise(batch, seed=seed), sigmas, guide)
    finally:
        if guide_class is not None:
            monkeypatch.undo()


CASES = {  # name: (schedule, batch, target)
    "higfa": (Schedule(stage_boundary=0.4), 2, [1, 2]),
    "higfa-robust": (Schedule.from_preset("higfa-robust", stage_boundary=0.5), 1, 1),
    "inner-map": (Schedule(stage_boundary=0.5, inner_iterations=2, grad_map=True, gating=False), 2, 1),
    "measure-every": (Schedule(stage_boundary=0.3, measure_every=2, batch_confidence="min"), 2, [0, 3]),
    "all-steps": (Schedule.from_preset("classifier-all-steps", classifier_scale=2.0), 1, 0),
    "contour": (Schedule.from_preset("contour"), 1, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_without_a_judge_every_output_is_bit_identical_to_before(tiny_world, sigmas, case, monkeypatch):
    """Images (latents), trace JSON bytes and the trace plot of today's Guide(judge=None) equal those of the
    Guide before the judge existed, on the same machine (so the comparison holds on any CPU)."""
    Before = before_judge_guide()
    schedule, batch, target = CASES[case]
    use = target is not None
    args = (schedule, tiny_world.classifier if use else None, tiny_world.decode if use else None, target)
    old = _run(tiny_world, sigmas, Before(*args), batch, 3, monkeypatch, Before)
    new = _run(tiny_world, sigmas, Guide(*args, judge=None), batch, 3)
    assert torch.equal(new.latent, old.latent)
    assert trace_bytes(new.trace, indent=1) == trace_bytes(old.trace, indent=1)
    assert np.array_equal(new.trace.plot(size=(480, 270)), old.trace.plot(size=(480, 270)))
    assert new.costs.as_dict()["classifier_forward"] == old.costs.as_dict()["classifier_forward"]
    assert new.trace.judge is None and "judge" not in new.trace.to_dict()


@pytest.mark.parametrize("schedule", [Schedule(stage_boundary=0.4), Schedule(stage_boundary=0.3, measure_every=2),
                                      Schedule.from_preset("classifier-all-steps", inner_iterations=2)],
                         ids=["higfa", "measure-every", "all-steps-inner"])
def test_a_judge_equal_to_the_guide_gives_the_no_judge_images(tiny_world, sigmas, schedule):
    clf = tiny_world.classifier
    plain = sample(tiny_world.denoiser, tiny_world.noise(2, seed=4), sigmas,
                   Guide(schedule, clf, tiny_world.decode, target=[1, 3]))
    guide = Guide(schedule, clf, tiny_world.decode, target=[1, 3], judge=clf, judge_name="itself")
    judged = sample(tiny_world.denoiser, tiny_world.noise(2, seed=4), sigmas, guide)
    assert torch.equal(judged.latent, plain.latent)
    a, b = plain.trace.steps, judged.trace.steps
    assert [(r.index, r.cfg, r.contour, r.classifier_scale, r.gated, r.confidence, r.grad_norm) for r in a] == [
        (r.index, r.cfg, r.contour, r.classifier_scale, r.gated, r.confidence, r.grad_norm) for r in b]
    measured = [r for r in b if r.confidence is not None]
    assert measured and all(r.judge_confidence == r.confidence for r in measured)
    assert all(r.judge_confidence is None for r in b if r.confidence is None)
    # one judge forward per measured row; the first stage-2 measurement (if the schedule has one) is the judge's
    # alone: it decodes for the judge, and the guide skips that forward
    first = guide.judge_costs.decode_forward
    assert first == (0 if schedule.classifier_steps == "all" else 1)
    assert guide.judge_costs.classifier_forward == len(measured) + first
    assert judged.costs.classifier_forward == plain.costs.classifier_forward - first
    assert judged.costs.classifier_backward == plain.costs.classifier_backward


def _n_stage2(world, sigmas, pi_c=0.7):
    ns = world.noise_schedule
    return sum(ns.sigma_to_percent(float(sigmas[i])) >= pi_c for i in range(len(sigmas) - 1))


def test_a_sure_judge_gates_an_unsure_guide(tiny_world, sigmas):
    n2 = _n_stage2(tiny_world, sigmas)
    guide = Guide(Schedule(), Confident(2, sure=False), tiny_world.decode, target=2, judge=Confident(2),
                  judge_name="sure")
    out = sample(tiny_world.denoiser, tiny_world.noise(1), sigmas, guide)
    assert out.costs.classifier_backward == out.costs.decode_backward == 0  # the judge's p ≈ 1 gated every step
    assert out.costs.classifier_forward == n2  # the guide still measures its own p (no first measurement)
    assert guide.judge_costs.classifier_forward == n2 + 1 and guide.judge_costs.decode_forward == 1
    rows = [r for r in out.trace.steps if r.stage == 2]
    assert len(rows) == n2 and all(r.gated == [True] and r.classifier_scale == [0.0] for r in rows)
    assert all(r.judge_confidence[0] > 0.99 and r.confidence[0] < 0.3 for r in rows)
    assert all(r.cfg == Schedule().cfg_highconf for r in rows)  # the ramp followed the judge
    gap = out.trace.fooling_gap()
    assert gap is not None and gap[0] < -0.69  # the guide is less sure than its judge here


def test_an_unsure_judge_keeps_a_fooled_guide_guiding_with_the_guides_gradient(tiny_world, sigmas):
    n2 = _n_stage2(tiny_world, sigmas)
    fooled = sample(tiny_world.denoiser, tiny_world.noise(1), sigmas,
                    Guide(Schedule(), Confident(2), tiny_world.decode, target=2))
    assert fooled.costs.classifier_backward == 0  # alone, the sure guide gates itself off
    judged = sample(tiny_world.denoiser, tiny_world.noise(1), sigmas,
                    Guide(Schedule(), Confident(2), tiny_world.decode, target=2, judge=Confident(2, sure=False)))
    assert judged.costs.classifier_backward == judged.costs.decode_backward == n2
    rows = [r for r in judged.trace.steps if r.stage == 2]
    assert all(r.gated == [False] and r.classifier_scale[0] == pytest.approx(1.0) for r in rows)
    assert all(r.cfg == Schedule().cfg_lowconf for r in rows)  # p_judge ≈ 1/4 < τ_lo: full guidance
    summary = json.loads(judged.trace.to_json())["summary"]
    assert summary["fooling_gap"][0] > 0.7 and summary["final_judge_confidence"][0] < 0.3


def test_the_gradient_stays_the_guides(tiny_world, sigmas):
    """Without modulation the first stage-2 x̂0 is the same with and without a judge: the guide's gradient
    (its norm in the trace) and the guide's p are the same there; the judge only measured."""
    sch = Schedule(modulate=False, gating=False, stage_boundary=0.5)
    plain = sample(tiny_world.denoiser, tiny_world.noise(1, seed=8), sigmas,
                   Guide(sch, tiny_world.classifier, tiny_world.decode, target=1))
    judged = sample(tiny_world.denoiser, tiny_world.noise(1, seed=8), sigmas,
                    Guide(sch, tiny_world.classifier, tiny_world.decode, target=1, judge=Confident(1, sure=False)))
    assert torch.equal(judged.latent, plain.latent)  # nothing the judge says changes an unmodulated, ungated run
    first = [r for r in judged.trace.steps if r.stage == 2][0]
    ref = [r for r in plain.trace.steps if r.stage == 2][0]
    assert first.grad_norm == ref.grad_norm and first.confidence == ref.confidence
    assert first.judge_confidence[0] == pytest.approx(0.25, abs=0.03)


def test_measure_every_follows_the_judge(tiny_world, sigmas):
    n2 = _n_stage2(tiny_world, sigmas)
    guide = Guide(Schedule(measure_every=3), Confident(0), tiny_world.decode, target=0,
                  judge=Confident(0, sure=False))
    out = sample(tiny_world.denoiser, tiny_world.noise(1), sigmas, guide)
    measured = len(range(0, n2, 3))
    assert out.costs.classifier_backward == measured  # the unsure judge keeps guidance on, every 3rd step
    assert guide.judge_costs.classifier_forward == measured + 1
    rows = [r for r in out.trace.steps if r.stage == 2]
    assert sum(r.judge_confidence is not None for r in rows) == measured


def test_the_judge_has_its_own_view_draw(tiny_world, sigmas):
    sch = Schedule.from_preset("higfa-robust", views=4, stage_boundary=0.5)
    clf = tiny_world.classifier
    runs = [sample(tiny_world.denoiser, tiny_world.noise(1, seed=2), sigmas,
                   Guide(sch, clf, tiny_world.decode, target=1, judge=clf)) for _ in range(2)]
    assert torch.equal(runs[0].latent, runs[1].latent)  # reproducible
    rows = [r for r in runs[0].trace.steps if r.confidence is not None]
    assert rows and all(r.judge_confidence != r.confidence for r in rows)  # the same network, other crops
    assert all(abs(r.judge_confidence[0] - r.confidence[0]) < 0.2 for r in rows)
    guide_seeds = {1_000_003 * (k + 1) + it for k in range(STEPS) for it in range(64)}
    assert not guide_seeds & {judge_view_seed(k) for k in range(STEPS)}


def test_judged_trace_json_split_and_plot(tiny_world, sigmas):
    sch = Schedule(stage_boundary=0.4)
    out = sample(tiny_world.denoiser, tiny_world.noise(2, seed=1), sigmas,
                 Guide(sch, Confident(1), tiny_world.decode, target=1, judge=Confident(1, sure=False),
                       judge_name="judge.safetensors"))
    data = json.loads(out.trace.to_json())
    assert data["judge"] == "judge.safetensors"
    rows = [r for r in data["steps"] if r["confidence"] is not None]
    assert rows and all(len(r["judge_confidence"]) == 2 for r in rows)
    assert all("judge_confidence" not in r for r in data["steps"] if r["confidence"] is None)
    again = Trace.from_json(out.trace.to_json())
    assert again.judge == "judge.safetensors" and again.to_json() == out.trace.to_json()
    one = again.split(2)[1]
    assert one.judge == "judge.safetensors" and all(len(s.judge_confidence) == 1 for s in one.steps
                                                    if s.judge_confidence is not None)
    plain = sample(tiny_world.denoiser, tiny_world.noise(2, seed=1), sigmas,
                   Guide(sch, Confident(1), tiny_world.decode, target=1))
    judged_png, plain_png = again.plot(size=(640, 360)), plain.trace.plot(size=(640, 360))
    assert judged_png.shape == plain_png.shape == (360, 640, 3)
    purple = np.array([0x94, 0x67, 0xBD])  # tab:purple, the p_judge curve
    near = lambda img, c: (np.abs(img.astype(int) - c).sum(-1) < 30).sum()  # noqa: E731
    assert near(judged_png, purple) > 100 and near(plain_png, purple) == 0


def test_interrupt_is_called_once_per_inner_iteration_and_stops_the_run(tiny_world, sigmas):
    calls = []
    sch = Schedule.from_preset("classifier-all-steps", inner_iterations=3)
    guide = Guide(sch, tiny_world.classifier, tiny_world.decode, target=1, interrupt=lambda: calls.append(guide.step))
    out = sample(tiny_world.denoiser, tiny_world.noise(1), sigmas, guide)
    assert out.costs.classifier_backward == 3 * STEPS and len(calls) == 3 * STEPS
    assert calls == sorted(calls) and set(calls) == set(range(STEPS))

    class Stop(Exception):
        pass

    def stop():
        calls.append(None)
        if len(calls) > 3 * STEPS + 4:
            raise Stop

    guide = Guide(sch, tiny_world.classifier, tiny_world.decode, target=1, interrupt=stop)
    with pytest.raises(Stop):
        sample(tiny_world.denoiser, tiny_world.noise(1), sigmas, guide)
    assert guide.step == 1  # stopped inside the second step's inner loop, not at its end
    with pytest.raises(ValueError, match="interrupt must be a function"):
        Guide(sch, tiny_world.classifier, tiny_world.decode, target=1, interrupt=3)


def test_a_judge_without_classifier_guidance_is_not_used(tiny_world, sigmas):
    out = sample(tiny_world.denoiser, tiny_world.noise(1), sigmas,
                 Guide(Schedule.from_preset("contour"), judge=Confident(0)))
    assert out.trace.judge is None and all(r.judge_confidence is None for r in out.trace.steps)


# ----------------------------------------------------------------------------- the confidence filter
def test_confidence_filter_keeps_what_the_judge_believes(tiny_world):
    clf = tiny_world.classifier
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 64, 64, generator=g)
    targets = [0, 1, 2, 3, 0, 1]
    with torch.no_grad():
        expected = torch.softmax(clf(images).float(), -1)[torch.arange(6), torch.tensor(targets)]
    p = scores(images, clf, targets)
    assert torch.equal(p, expected)  # the formula higfa augment scores final images with
    assert torch.allclose(scores(images, clf, targets, batch_size=4), expected, atol=1e-6)
    threshold = float(expected.median())
    f = confidence_filter(images, clf, targets, threshold)
    assert f.kept == [i for i in range(6) if expected[i] >= threshold]
    assert f.dropped == [i for i in range(6) if expected[i] < threshold] and len(f.kept) + len(f.dropped) == 6
    assert f.summary().startswith(f"kept {len(f.kept)} of 6 images")
    assert confidence_filter(images, clf, 2, 0.0).kept == list(range(6))  # one target for all
    assert confidence_filter(images, clf, 2, 1.0).dropped == list(range(6)) or math.isclose(
        float(scores(images, clf, 2).max()), 1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=1.5), "threshold 1.5: a confidence threshold is a probability in"),
    (dict(targets=[0, 1]), "2 targets for 3 images: give one target, or one per image"),
    (dict(images=torch.rand(3, 64, 64, 3)), r"images must be \[N,3,H,W\]"),
])
def test_confidence_filter_errors_name_the_input(tiny_world, kwargs, message):
    args = dict(images=torch.rand(3, 3, 64, 64), targets=1, threshold=0.5) | kwargs
    with pytest.raises(ValueError, match=message):
        confidence_filter(args["images"], tiny_world.classifier, args["targets"], args["threshold"])


def test_map_targets_matches_class_names():
    guide = ["Red_Finch", "blue jay", "Crow"]
    judge = ["crow", "red finch", "Blue-Jay", "sparrow"]
    assert map_targets([0, 1, 2], guide, judge) == [1, 2, 0]
    assert map_targets([3], None, judge) == [3]
    with pytest.raises(ValueError, match="the target class 'Crow' is not one of the judge's classes"):
        map_targets([2], guide, ["red finch"])
    with pytest.raises(ValueError, match="target class index 5 is out of range"):
        map_targets([5], None, judge)

