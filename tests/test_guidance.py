import pytest
import torch

from higfa.guidance import (Costs, cfg_combine, classifier_log_prob, eps_form_update, normalise, rms,
                            sigma_form_update)


def test_sigma_and_eps_forms_agree():
    """x̂0 + w σ² n (σ form) equals the x̂0 implied by ε' = ε − w √(1−ᾱ) ∇_z (VP form), ∇_z = n/√ᾱ."""
    g = torch.Generator().manual_seed(0)
    B = 3
    x0 = torch.randn(B, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(B, 4, 8, 8, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.2, 1.0, 3.5], dtype=torch.float64)
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    n = normalise(torch.randn(B, 4, 8, 8, generator=g, dtype=torch.float64))
    s = sigma.view(-1, 1, 1, 1)
    abar = 1 / (1 + sigma**2)
    a = abar.view(-1, 1, 1, 1)
    z = a.sqrt() * (x0 + s * eps)  # VP latent of x = x0 + σ ε

    x0_sigma = sigma_form_update(x0, n, w, sigma)
    eps_new = eps_form_update(eps, n / a.sqrt(), w, abar)
    x0_vp = (z - (1 - a).sqrt() * eps_new) / a.sqrt()
    torch.testing.assert_close(x0_vp, x0_sigma, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(x0_sigma, x0)  # the update did something


def test_normalise_and_cfg():
    g = torch.randn(2, 4, 5, 5) * torch.tensor([1e-6, 30.0]).view(-1, 1, 1, 1)
    torch.testing.assert_close(rms(normalise(g)), torch.ones(2))
    assert normalise(g, "identity") is g
    with pytest.raises(ValueError, match="grad_norm"):
        normalise(g, "l1")
    u, c = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(cfg_combine(u, c, 7.5), torch.full((2, 3), 7.5))
    assert torch.equal(cfg_combine(u, c, torch.tensor([1.0, 2.0]))[:, 0], torch.tensor([1.0, 2.0]))


def _linear_setup():
    torch.manual_seed(0)
    decode = torch.nn.Conv2d(4, 3, 1)
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    x0 = torch.randn(2, 4, 8, 8)
    return decode, clf, x0


def test_classifier_gradient_is_grad_of_log_prob():
    decode, clf, x0 = _linear_setup()
    target = torch.tensor([1, 3])
    costs = Costs()
    p, g = classifier_log_prob(x0, decode, clf, target, grad=True, costs=costs)
    x = x0.clone().requires_grad_(True)
    logp = torch.log_softmax(clf(decode(x)), -1)[torch.arange(2), target]
    (ref,) = torch.autograd.grad(logp.sum(), x)
    torch.testing.assert_close(g, ref)
    torch.testing.assert_close(p, logp.exp().detach())
    assert costs.decode_forward == costs.decode_backward == costs.classifier_backward == 1
    p2, g2 = classifier_log_prob(x0, decode, clf, target, grad=False, costs=costs)
    assert g2 is None and torch.allclose(p2, p) and costs.classifier_forward == 2 and costs.decode_backward == 1


def test_classifier_gradient_works_under_inference_mode():
    """ComfyUI runs nodes under torch.inference_mode(): the gradient path must leave it itself."""
    decode, clf, x0 = _linear_setup()
    with torch.inference_mode():
        x_inf = x0.clone()
        p, g = classifier_log_prob(x_inf, decode, clf, torch.tensor(2), grad=True)
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


# ----------------------------------------------------------------------------- random views
def test_one_view_is_the_image_and_views_are_seeded_and_batch_shared():
    from higfa.guidance import Views

    img = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert Views(1, 0.5, 0.1, seed=3).apply(img) is img
    v = Views(4, 0.3, 0.02, seed=3).apply(img)
    assert v.shape == (8, 3, 16, 16) and torch.isfinite(v).all()
    assert torch.equal(v, Views(4, 0.3, 0.02, seed=3).apply(img))  # reproducible per seed
    assert not torch.allclose(v, Views(4, 0.3, 0.02, seed=4).apply(img))
    assert not torch.allclose(v[:2], img, atol=1e-3)  # a view is not the image
    # a sample's views do not depend on the rest of the batch
    alone = Views(4, 0.3, 0.02, seed=3).apply(img[1:])
    torch.testing.assert_close(v.reshape(4, 2, 3, 16, 16)[:, 1], alone)


def _pixel_classifier(size=32, classes=3, seed=0):
    """Linear on the pixels with white-noise weights: the textbook non-robust classifier whose raw gradient
    is a high-frequency (adversarial) pattern."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, classes))


def _low_frequency_share(g: torch.Tensor) -> float:
    blur = torch.nn.functional.avg_pool2d(g, 5, stride=1, padding=2, count_include_pad=False)
    return float(blur.pow(2).sum() / g.pow(2).sum())


def test_views_average_out_the_adversarial_part_of_the_gradient():
    from higfa.guidance import Views, measure

    clf, decode = _pixel_classifier(), torch.nn.Identity()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([2])
    one = measure(x, decode, clf, target, grad=True)
    many = measure(x, decode, clf, target, grad=True, views=Views(16, 0.25, 0.03, seed=7))
    again = measure(x, decode, clf, target, grad=True, views=Views(16, 0.25, 0.03, seed=7))
    assert torch.isfinite(many.g).all() and not torch.allclose(many.g, one.g)
    assert torch.equal(many.g, again.g) and torch.equal(many.p, again.p)
    # the K=1 gradient is white noise (~ 1/25 of its energy survives a 5×5 blur); averaged over views it is smooth
    assert _low_frequency_share(one.g) < 0.1 < 0.2 < _low_frequency_share(many.g)
    # p is the views' mean confidence, not the image's
    assert 0 < float(many.p) < 1 and not torch.allclose(many.p, one.p)


# ----------------------------------------------------------------------------- precision and memory
class _NanInBfloat16(torch.nn.Module):
    """Finite logits in float32, NaN when run in bfloat16 (as an fp16 overflow would give)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))

    def forward(self, image):
        out = self.lin(image)
        return out * float("nan") if out.dtype == torch.bfloat16 else out


def test_autocast_falls_back_to_float32_when_the_gradient_is_not_finite():
    from higfa.guidance import measure

    decode, _, x0 = _linear_setup()
    clf, target = _NanInBfloat16(), torch.tensor([1, 3])
    costs = Costs()
    ref = measure(x0, decode, clf, target, grad=True)
    m = measure(x0, decode, clf, target, grad=True, costs=costs, autocast=torch.bfloat16)
    assert m.fallback and costs.autocast_fallbacks == 1 and costs.classifier_forward == 2
    assert torch.equal(m.g, ref.g) and torch.equal(m.p, ref.p)
    # a finite low-precision pass is kept (no fallback) and is close to float32
    decode, clf2, _ = _linear_setup()
    costs = Costs()
    low = measure(x0, decode, clf2, target, grad=True, costs=costs, autocast=torch.bfloat16)
    full = measure(x0, decode, clf2, target, grad=True)
    assert not low.fallback and costs.autocast_fallbacks == 0 and costs.classifier_forward == 1
    assert torch.isfinite(low.g).all() and not torch.equal(low.g, full.g)
    torch.testing.assert_close(low.g, full.g, rtol=0.1, atol=0.05 * float(full.g.abs().max()))


def test_guide_precision_auto_is_float32_on_the_cpu():
    from higfa.guide import Guide, _autocast_dtype
    from higfa.schedule import Schedule

    assert _autocast_dtype("auto", torch.device("cpu")) is None
    assert _autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="precision 'fp8'"):
        Guide(Schedule.from_preset("contour"), precision="fp8")


def test_classifier_input_is_resized_to_its_own_size_before_the_forward():
    from higfa.classifier import Classifier
    from higfa.guidance import measure

    seen = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)

        def forward(self, x):
            seen.append(tuple(x.shape))
            return self.lin(x.mean((2, 3)))

    clf = Classifier(Model(), ["a", "b", "c", "d"], input_size=24)
    decode = torch.nn.Upsample(scale_factor=8)  # latent 8×8 -> a 64×64 "image"
    x0 = torch.randn(2, 3, 8, 8)
    m = measure(x0, decode, clf, torch.tensor(1), grad=True)
    assert seen == [(2, 3, 24, 24)] and m.image.shape[-1] == 64 and torch.isfinite(m.g).all()


def test_checkpointed_decoder_gives_the_same_gradient():
    from higfa.backends.denoiser import vae_decode
    from higfa.testing.stand_ins import tiny_vae

    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    clf = _pixel_classifier(size=32, classes=3)
    plain = measure_g(vae_decode(tiny_vae()), clf, x0)
    vae = tiny_vae()
    decode = vae_decode(vae, checkpoint=True)
    assert vae.decoder.gradient_checkpointing
    torch.testing.assert_close(measure_g(decode, clf, x0), plain)


def measure_g(decode, clf, x0):
    return classifier_log_prob(x0, decode, clf, torch.tensor(0), grad=True)[1]
