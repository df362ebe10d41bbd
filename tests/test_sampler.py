"""The reference sampler and the Guide: parity, stage separation, gating, NaN guard, guidance effect."""

import numpy as np
import pytest
import torch

from higfa.guide import Guide
from higfa.sampler import sample
from higfa.schedule import Schedule
from higfa.testing.stand_ins import Confident

STEPS = 30


def plain_cfg(denoiser, noise, sigmas, cfg, contour):
    """Textbook CFG + Euler/DDIM, written independently of the package."""
    x = noise * sigmas[0]
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        u, c = denoiser(x, torch.full((x.shape[0],), float(s)), ("uncond", "cond"), contour)
        x0 = u + cfg * (c - u)
        x = x + (x - x0) / s * (sigmas[i + 1] - s)
    return x


@pytest.fixture(scope="module")
def sigmas(tiny_world):
    return tiny_world.noise_schedule.sample_sigmas(STEPS)


@pytest.mark.parametrize("preset,contour", [("cfg", 0.0), ("contour", 0.75)])
def test_presets_without_classifier_equal_plain_sampling_bit_for_bit(tiny_world, sigmas, preset, contour):
    noise = tiny_world.noise(2, seed=5)
    ref = plain_cfg(tiny_world.denoiser, noise, sigmas, 7.5, contour)
    out = sample(tiny_world.denoiser, noise, sigmas, Schedule.from_preset(preset))
    assert torch.equal(out.latent, ref)
    assert out.denoiser_calls == 2 * STEPS and out.costs.classifier_forward == 0


def _stage2_indices(world, sigmas, pi_c):
    ns = world.noise_schedule
    return [i for i in range(len(sigmas) - 1) if ns.sigma_to_percent(float(sigmas[i])) >= pi_c]


def test_stage1_never_calls_the_classifier(tiny_world, sigmas, counting):
    clf = counting(tiny_world.classifier)
    guide = Guide(Schedule(), clf, tiny_world.decode, target=1)
    steps_at_call = []
    clf.register_forward_pre_hook(lambda *_: steps_at_call.append(guide.step))
    out = sample(tiny_world.denoiser, tiny_world.noise(1), sigmas, guide)
    stage2 = _stage2_indices(tiny_world, sigmas, 0.7)
    assert 0 < len(stage2) < STEPS and stage2 == list(range(stage2[0], STEPS))
    assert steps_at_call and min(steps_at_call) == stage2[0]
    # one measurement on the last stage-1 x̂0, then one forward per stage-2 step
    assert clf.calls == len(stage2) + 1 == out.costs.classifier_forward
    assert out.denoiser_calls == 2 * STEPS  # stage 1 at parity: no extra model calls anywhere
    rows = out.trace.steps
    assert all(r.confidence is None and max(r.classifier_scale) == 0 for r in rows if r.stage == 1)
    assert all(r.confidence is not None for r in rows if r.stage == 2)




def test_gating_skips_the_backward_when_confident(tiny_world, sigmas):
    n2 = len(_stage2_indices(tiny_world, sigmas, 0.7))
    out = sample(tiny_world.denoiser, tiny_world.noise(1), sigmas,
                 Guide(Schedule(), Confident(2), tiny_world.decode, target=2))
    assert out.costs.classifier_backward == 0 and out.costs.decode_backward == 0
    assert out.costs.classifier_forward == n2 + 1
    rows = [r for r in out.trace.steps if r.stage == 2]
    assert all(r.gated == [True] for r in rows) and all(r.classifier_scale == [0.0] for r in rows)
    # the same classifier, unsure: every stage-2 step runs the backward
    out = sample(tiny_world.denoiser, tiny_world.noise(1), sigmas,
                 Guide(Schedule(), Confident(2, sure=False), tiny_world.decode, target=2))
    assert out.costs.classifier_backward == out.costs.decode_backward == n2
    assert not any(any(r.gated) for r in out.trace.steps)


def test_measure_every_m(tiny_world, sigmas):
    n2 = len(_stage2_indices(tiny_world, sigmas, 0.7))
    out = sample(tiny_world.denoiser, tiny_world.noise(1), sigmas,
                 Guide(Schedule(measure_every=3), Confident(0, sure=False), tiny_world.decode, target=0))
    assert out.costs.classifier_backward == len(range(0, n2, 3))


class NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        g[0] = float("nan")
        return g


def test_nan_gradient_skips_guidance_and_never_reaches_the_output(tiny_world, sigmas):
    decode = lambda z: tiny_world.decode(NaNGrad.apply(z))  # noqa: E731
    guide = Guide(Schedule(), tiny_world.classifier, decode, target=1)
    out = sample(tiny_world.denoiser, tiny_world.noise(2), sigmas, guide)
    assert torch.isfinite(out.latent).all()
    rows = [r for r in out.trace.steps if r.stage == 2]
    assert all(r.nan_skipped == [True, False] for r in rows)
    assert all(r.classifier_scale[0] == 0 and r.classifier_scale[1] > 0 for r in rows)
    assert out.trace.summary()["nan_skipped"] == len(rows)


def test_batch_gets_per_sample_classifier_scales(tiny_world):
    class Split(torch.nn.Module):  # sample 0 confident, sample 1 not
        def forward(self, image):
            onehot = torch.tensor([1.0, 0, 0, 0])
            return onehot * (image.mean((1, 2, 3))[:, None] * 0.1 + torch.tensor([[30.0], [0.0]]))

    guide = Guide(Schedule(), Split(), tiny_world.decode, target=0)
    plan = guide.plan(0.5, 0.8, index=0)  # stage 2, nothing measured yet: full guidance
    x0 = torch.randn(2, 4, 8, 8)
    guide.refine(x0, plan)
    plan = guide.plan(0.4, 0.85, index=1)
    out = guide.refine(x0, plan)
    row = guide.trace.steps[-1]
    assert row.gated == [True, False] and row.classifier_scale[0] == 0 and row.classifier_scale[1] == 1.0
    assert torch.equal(out[0], x0[0]) and not torch.equal(out[1], x0[1])
    # cfg/contour are shared: they follow the batch mean confidence ((1 + 0.25) / 2)
    h = (0.625 - 0.3) / 0.6
    assert plan.cfg == pytest.approx(4.0 + 3.5 * h, rel=1e-2)


def test_repeated_sigma_is_the_same_step(tiny_world):
    """Multi-evaluation samplers call twice per step: p_{k-1} must not advance inside a step."""
    guide = Guide(Schedule(stage_boundary=0.0), Confident(1, sure=False), tiny_world.decode, target=1)
    x0 = torch.randn(1, 4, 8, 8)
    p1 = guide.plan(2.0, 0.5)
    guide.refine(x0, p1)
    p2 = guide.plan(2.0, 0.5)
    assert p2.index == p1.index == 0
    guide.refine(x0, p2)
    assert guide.plan(1.0, 0.6).index == 1


def test_missing_classifier_is_a_clear_error(tiny_world):
    with pytest.raises(ValueError, match="classifier, decode, target are missing"):
        Guide(Schedule())
    Guide(Schedule.from_preset("contour"))  # fine without one


@pytest.fixture(scope="module")
def brightness_classifier(tiny_world, sigmas):
    """A tiny timm classifier trained (here, in seconds) to tell bright from dark decoded samples."""
    from higfa.testing.stand_ins import tiny_classifier

    with torch.no_grad():
        short = tiny_world.noise_schedule.sample_sigmas(10)
        lat = sample(tiny_world.denoiser, tiny_world.noise(64, seed=100), short, Schedule.from_preset("contour")).latent
        img = tiny_world.decode(lat).clamp(0, 1)
    bright = img.mean((1, 2, 3))
    labels = (bright > bright.median()).long()
    clf = tiny_classifier(num_classes=2, input_size=32, seed=7)
    clf.train().requires_grad_(True)
    opt = torch.optim.Adam(clf.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(img), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(clf(img[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval().requires_grad_(False)
    with torch.no_grad():
        acc = (clf(img).argmax(1) == labels).float().mean().item()
    assert acc > 0.8, f"the test classifier did not learn brightness (train accuracy {acc:.2f})"
    return clf


def test_classifier_guidance_raises_target_confidence(tiny_world, sigmas, brightness_classifier):
    clf, target = brightness_classifier, 1
    noise = tiny_world.noise(8, seed=1234)

    def final_p(schedule):
        guide = Guide(schedule, clf, tiny_world.decode, target=target)
        lat = sample(tiny_world.denoiser, noise, sigmas, guide).latent
        with torch.no_grad():
            return torch.softmax(clf(tiny_world.decode(lat)), -1)[:, target]

    unguided = final_p(Schedule.from_preset("contour"))
    guided = final_p(Schedule(classifier_scale=2.0, stage_boundary=0.5))
    assert guided.mean() > unguided.mean() + 0.1, (guided, unguided)
    assert (guided > unguided).float().mean() >= 0.75


# ----------------------------------------------------------------------------- optional parts of the method
SHORT = 8


class _RecordingDenoiser:
    """Wraps a Denoiser; records, per call, whether a gradient was asked for and is being taken."""

    def __init__(self, inner):
        self.inner, self.noise_schedule, self.calls = inner, inner.noise_schedule, []

    def __call__(self, x, sigma, branches, contour, grad=False):
        out = self.inner(x, sigma, branches, contour, grad=grad)
        self.calls.append((grad, out[0].requires_grad))
        return out


def test_inner_iterations_count_backward_passes(tiny_world):
    sig = tiny_world.noise_schedule.sample_sigmas(SHORT)
    base = Schedule.from_preset("classifier-all-steps", classifier_scale=2.0)
    runs = {}
    for n in (1, 3):
        guide = Guide(base.replace(inner_iterations=n), tiny_world.classifier, tiny_world.decode, target=1)
        runs[n] = sample(tiny_world.denoiser, tiny_world.noise(1, seed=2), sig, guide)
    assert runs[1].costs.classifier_backward == runs[1].costs.decode_backward == SHORT
    assert runs[3].costs.classifier_backward == runs[3].costs.decode_backward == 3 * SHORT
    assert runs[3].costs.classifier_forward == 3 * SHORT
    assert not torch.allclose(runs[3].latent, runs[1].latent) and torch.isfinite(runs[3].latent).all()
    # the confidence is the one measured before the first update, as with one iteration
    assert runs[3].trace.steps[0].confidence == runs[1].trace.steps[0].confidence


def test_gradient_through_the_denoiser_differs_and_calls_the_model_with_grad(tiny_world):
    sig = tiny_world.noise_schedule.sample_sigmas(SHORT)
    base = Schedule.from_preset("classifier-all-steps", classifier_scale=2.0)
    plain = sample(tiny_world.denoiser, tiny_world.noise(1, seed=2), sig,
                   Guide(base, tiny_world.classifier, tiny_world.decode, target=1))
    den = _RecordingDenoiser(tiny_world.denoiser)
    through = sample(den, tiny_world.noise(1, seed=2), sig,
                     Guide(base.replace(grad_through_denoiser=True), tiny_world.classifier, tiny_world.decode, 1))
    assert [c for c in den.calls if c[0]] == [(True, True)] * SHORT  # one differentiable call per guided step
    assert all(not c[1] for c in den.calls if not c[0])  # the sampling calls build no graph
    assert through.costs.denoiser_backward == through.costs.denoiser_forward == SHORT
    assert plain.costs.denoiser_backward == 0
    assert torch.isfinite(through.latent).all() and not torch.allclose(through.latent, plain.latent)
    # the first step's confidence is measured on the same x̂0 either way
    assert through.trace.steps[0].confidence == pytest.approx(plain.trace.steps[0].confidence, abs=1e-5)


def test_gradient_through_the_denoiser_needs_a_differentiable_backend(tiny_world):
    sig = tiny_world.noise_schedule.sample_sigmas(SHORT)
    guide = Guide(Schedule(grad_through_denoiser=True, stage_boundary=0.0), tiny_world.classifier,
                  tiny_world.decode, target=1)
    guide.reset()
    plan = guide.plan(float(sig[0]), 0.5, 0)
    with pytest.raises(ValueError, match="'grad_through_denoiser' = True"):
        guide.refine(torch.zeros(1, 4, 8, 8), plan)


def test_views_run_and_are_reproducible(tiny_world):
    sig = tiny_world.noise_schedule.sample_sigmas(SHORT)
    sch = Schedule.from_preset("classifier-all-steps", classifier_scale=2.0, views=4)
    runs = [sample(tiny_world.denoiser, tiny_world.noise(1, seed=2), sig,
                   Guide(sch, tiny_world.classifier, tiny_world.decode, target=1)) for _ in range(2)]
    one = sample(tiny_world.denoiser, tiny_world.noise(1, seed=2), sig,
                 Guide(sch.replace(views=1), tiny_world.classifier, tiny_world.decode, target=1))
    assert torch.equal(runs[0].latent, runs[1].latent) and torch.isfinite(runs[0].latent).all()
    assert not torch.allclose(runs[0].latent, one.latent)
    assert runs[0].costs.classifier_forward == one.costs.classifier_forward  # K views, one batched forward


def test_grad_map_is_in_the_trace_json_and_the_plot(tiny_world):
    import json

    from higfa.trace import Trace

    sig = tiny_world.noise_schedule.sample_sigmas(SHORT)
    sch = Schedule(stage_boundary=0.3, gating=False)
    runs = {m: sample(tiny_world.denoiser, tiny_world.noise(2, seed=2), sig,
                      Guide(sch.replace(grad_map=m), tiny_world.classifier, tiny_world.decode, target=1))
            for m in (False, True)}
    assert torch.equal(runs[True].latent, runs[False].latent)  # the map only observes
    data = json.loads(runs[True].trace.to_json())
    maps = [r["grad_map"] for r in data["steps"] if "grad_map" in r]
    guided = [r for r in data["steps"] if max(r["classifier_scale"]) > 0]
    assert guided and len(maps) == len(guided)
    m = np.asarray(maps[0])
    assert m.shape == (2, 8, 8) and m.max() == 1.0 and m.min() >= 0  # latent 8×8 < 16: its own size
    assert np.asarray(data["preview"]).shape == (2, 32, 32, 3)
    assert "grad_map" not in json.loads(runs[False].trace.to_json())["steps"][-1]
    again = Trace.from_json(runs[True].trace.to_json())
    with_maps, without = again.plot(size=(640, 360)), runs[False].trace.plot(size=(640, 360))
    assert without.shape == (360, 640, 3) and with_maps.shape[0] > 360 + 60
    strip = with_maps[380:]
    assert strip.std() > 20  # the strip has drawn content, not a blank band
    first = again.split(2)[1]
    assert np.asarray(first.steps[-1].grad_map).shape == (1, 8, 8) and len(first.preview) == 1


def test_classifier_all_steps_is_textbook_classifier_guidance_bit_for_bit(tiny_world):
    """With the new options at their defaults (one view, one iteration, no denoiser gradient, no map) the
    update is exactly x̂0 + w·σ²·g/rms(g), g = ∇_{x̂0} log softmax(f(decode(x̂0)))[y], as before."""
    sig = tiny_world.noise_schedule.sample_sigmas(SHORT)
    clf, decode, den = tiny_world.classifier, tiny_world.decode, tiny_world.denoiser
    noise = tiny_world.noise(2, seed=9)
    x = noise * sig[0]
    for i in range(SHORT):
        s = float(sig[i])
        u, c = den(x, torch.full((2,), s), ("uncond", "cond"), 0.75)
        x0 = u + 7.5 * (c - u)
        z = x0.detach().clone().requires_grad_(True)
        image = decode(z)
        leaf = image.detach().requires_grad_(True)
        logp = torch.log_softmax(clf(leaf).float(), -1)[torch.arange(2), torch.tensor([1, 1])]
        (gi,) = torch.autograd.grad(logp.sum(), leaf)
        (g,) = torch.autograd.grad(image, z, grad_outputs=gi)
        unit = g / (g.flatten(1).pow(2).mean(1).sqrt().reshape(-1, 1, 1, 1) + 1e-12)
        x0 = x0 + torch.full((2,), 2.0).reshape(-1, 1, 1, 1) * s**2 * unit
        x = x + (x - x0) / s * (float(sig[i + 1]) - s)
    out = sample(den, noise, sig, Guide(Schedule.from_preset("classifier-all-steps", classifier_scale=2.0), clf,
                                        decode, target=1))
    assert torch.equal(out.latent, x)
