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
