"""higfa.training: the generic classifier training loop (fast, synthetic data)."""

import numpy as np
import pytest
import torch

from higfa.classifier import build_classifier
from higfa.training import NO_AUGMENT, Augment, evaluate, features, predict, to_tensor, train_classifier


def _squares(n_per_class: int, seed: int):
    """3 classes told apart only by the colour of a small square at a random position: [N,3,32,32]."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0]])
    x = torch.rand(3 * n_per_class, 3, 32, 32, generator=g) * 0.3
    y = torch.arange(3).repeat_interleave(n_per_class)
    for i, c in enumerate(y):
        r, q = (int(v) for v in torch.randint(4, 24, (2,), generator=g))
        x[i, :, r:r + 5, q:q + 5] = colours[c].view(3, 1, 1)
    return x, y


def _clf(seed=0):
    torch.manual_seed(seed)
    return build_classifier("test_resnet", ["red", "green", "blue"], 32, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_learns_a_small_colour_cue_and_reports_history():
    x, y = _squares(40, 0)
    xt, yt = _squares(20, 1)
    res = train_classifier(_clf(), x, y, steps=60, batch_size=32, seed=0, eval_images=xt, eval_labels=yt,
                           eval_every=30)
    assert [h["step"] for h in res.history if "accuracy" in h] == [30, 60]
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    ev = evaluate(res.classifier, xt, yt)
    assert ev["accuracy"] > 0.8 and len(ev["per_class"]) == 3 and ev["n"] == 60
    assert not res.classifier.training and not any(p.requires_grad for p in res.classifier.parameters())


def test_same_seed_same_weights_and_weights_sampling():
    x, y = _squares(10, 0)
    a = train_classifier(_clf(), x, y, steps=5, batch_size=8, seed=3).classifier
    b = train_classifier(_clf(), x, y, steps=5, batch_size=8, seed=3).classifier
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    # weights: only class 0 is ever sampled -> the model learns to say class 0
    w = (y == 0).float()
    c = train_classifier(_clf(), x, y, steps=30, batch_size=16, weights=w, seed=0).classifier
    assert (predict(c, x).argmax(1) == 0).float().mean() > 0.9


def test_uint8_nhwc_input_and_features():
    x, y = _squares(4, 0)
    u8 = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    torch.testing.assert_close(to_tensor(u8), x, atol=1 / 255, rtol=0)
    res = train_classifier(_clf(), u8, y.numpy(), steps=2, batch_size=4, augment=NO_AUGMENT)
    f = features(res.classifier, u8)
    assert f.ndim == 2 and f.shape[0] == len(y)


def test_augment_is_seeded_and_keeps_range():
    x, _ = _squares(4, 0)
    aug = Augment(noise=0.05, blur=1.5)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.allclose(a, x)
    torch.testing.assert_close(NO_AUGMENT(x, torch.Generator().manual_seed(0)), x, atol=1e-5, rtol=0)


def test_clear_errors():
    x, y = _squares(2, 0)
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        train_classifier(_clf(), x, y[:5], steps=1)
    with pytest.raises(ValueError, match="3 classes"):
        train_classifier(_clf(), x, y + 5, steps=1)
    with pytest.raises(ValueError, match=r"uint8 images must be \[N,H,W,3\]"):
        to_tensor(np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="weights"):
        train_classifier(_clf(), x, y, steps=1, weights=torch.zeros(len(y)))


def test_resume_from_checkpoint_gives_the_same_weights(tmp_path):
    x, y = _squares(8, 0)
    ref = train_classifier(_clf(), x, y, steps=8, batch_size=8, seed=1).classifier.state_dict()
    ckpt = tmp_path / "run.ckpt"

    def kill(step, loss):
        if step == 5:
            raise KeyboardInterrupt  # stands in for a kill after the checkpoint of step 4

    with pytest.raises(KeyboardInterrupt):
        train_classifier(_clf(), x, y, steps=8, batch_size=8, seed=1, checkpoint=ckpt, checkpoint_every=2,
                         callback=kill)
    assert int(torch.load(ckpt, weights_only=True)["step"]) == 4
    res = train_classifier(_clf(seed=7), x, y, steps=8, batch_size=8, seed=1, checkpoint=ckpt, checkpoint_every=2)
    assert [h["step"] for h in res.history] == list(range(1, 9))
    got = res.classifier.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    with pytest.raises(ValueError, match=r"belongs to another run \(differs in \['lr'\]\)"):
        train_classifier(_clf(), x, y, steps=8, batch_size=8, seed=1, lr=1e-3, checkpoint=ckpt, checkpoint_every=2)


def test_pgd_attack_stays_within_epsilon_and_raises_the_loss():
    from higfa.training import pgd_attack

    x, y = _squares(10, 0)
    clf = train_classifier(_clf(), x, y, steps=20, batch_size=16, seed=0).classifier
    adv = pgd_attack(clf, x, y, eps=0.03, steps=3)
    assert float((adv - x).abs().max()) <= 0.03 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert float(ce(clf(adv), y)) > float(ce(clf(x), y))
    res = train_classifier(_clf(), x, y, steps=3, batch_size=8, seed=0, adversarial=0.02)
    assert res.steps == 3 and not res.classifier.training


def test_fooling_gap_is_the_guides_accuracy_minus_an_independent_ones_on_the_same_samples():
    from higfa.training import fooling_gap

    gap = fooling_gap([1, 2, 0, 3], [1, 0, 0, 0], [1, 2, 0, 3])  # the guide calls all 4 right, the other 2
    assert gap == {"guided_accuracy": 1.0, "independent_accuracy": 0.5, "fooling_gap": 0.5}
    # an independent classifier with its own class order: its targets are given in its indexing
    assert fooling_gap([0, 1], [5, 7], [0, 1], independent_targets=[5, 6])["fooling_gap"] == 0.5


def test_head_only_trains_the_final_layer_on_frozen_features():
    x, y = _squares(10, 0)
    clf = _clf()
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    res = train_classifier(clf, x, y, steps=5, batch_size=8, lr=0.05, head_only=True)
    after = res.classifier.state_dict()
    head = {k for k in after if k.startswith("model.fc.")}
    assert head == {"model.fc.weight", "model.fc.bias"}
    assert all(not torch.equal(after[k], before[k]) for k in head)
    assert all(torch.equal(after[k], before[k]) for k in after if k not in head)  # BatchNorm statistics too
    clf = _clf()  # with PGD batches too: the attack's own mode switch does not wake the body's BatchNorm
    after = train_classifier(clf, x, y, steps=3, batch_size=8, lr=0.05, head_only=True, adversarial=0.03)
    assert all(torch.equal(after.classifier.state_dict()[k], before[k]) for k in before if k not in head)
    with pytest.raises(ValueError, match="no trainable final layer"):
        plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 1))  # no get_classifier()
        train_classifier(_clf().__class__(plain, ["a"], 32), x[:2], y[:2] * 0, steps=1, head_only=True)
