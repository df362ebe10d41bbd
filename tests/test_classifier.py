import json

import pytest
import torch

from higfa.classifier import build_classifier, load_classifier, save_classifier


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    clf = build_classifier("test_resnet", ["Blue Jay", "Cardinal", "indigo_bunting"], 32,
                           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).eval()
    path = save_classifier(clf, tmp_path_factory.mktemp("clf") / "birds")
    return clf, path


def test_round_trip_same_logits(saved):
    clf, path = saved
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    loaded = load_classifier(path)
    x = torch.rand(2, 3, 48, 40)  # any size: the classifier resizes to its input size
    torch.testing.assert_close(loaded(x), clf(x))
    assert loaded.class_names == clf.class_names and loaded.input_size == (32, 32)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_num_classes_inferred_from_weights(saved, tmp_path):
    clf, path = saved
    side = json.loads(path.with_suffix(".json").read_text())
    del side["class_names"]
    (tmp_path / "anon.safetensors").write_bytes(path.read_bytes())
    (tmp_path / "anon.json").write_text(json.dumps(side))
    loaded = load_classifier(tmp_path / "anon.safetensors")
    assert loaded.num_classes == 3 and loaded.class_names == ["0", "1", "2"]


def test_resolve_by_index_name_and_digits(saved):
    clf, _ = saved
    assert clf.resolve(1) == 1 and clf.resolve("2") == 2
    assert clf.resolve("blue jay") == 0 and clf.resolve("Indigo Bunting") == 2
    with pytest.raises(ValueError, match="out of range.*3 classes"):
        clf.resolve(3)
    with pytest.raises(ValueError, match="Did you mean.*Cardinal"):
        clf.resolve("Cardinl")


def _write(tmp_path, path, **changes):
    side = json.loads(path.with_suffix(".json").read_text())
    side.update(changes)
    (tmp_path / "x.safetensors").write_bytes(path.read_bytes())
    (tmp_path / "x.json").write_text(json.dumps(side))
    return tmp_path / "x.safetensors"


def test_clear_errors(saved, tmp_path):
    _, path = saved
    with pytest.raises(FileNotFoundError, match="classifier weights not found"):
        load_classifier(tmp_path / "nope.safetensors")
    (tmp_path / "lonely.safetensors").write_bytes(path.read_bytes())
    with pytest.raises(FileNotFoundError, match="sidecar not found"):
        load_classifier(tmp_path / "lonely.safetensors")
    with pytest.raises(ValueError, match="do not match architecture 'test_vit'"):
        load_classifier(_write(tmp_path, path, architecture="test_vit"))
    with pytest.raises(ValueError, match="do not match architecture 'test_efficientnet'"):
        load_classifier(_write(tmp_path, path, architecture="test_efficientnet"))
    with pytest.raises(ValueError, match="not a timm model"):
        load_classifier(_write(tmp_path, path, architecture="resnet_5000"))
    with pytest.raises(ValueError, match="lists 2 class_names but the weights have 3"):
        load_classifier(_write(tmp_path, path, class_names=["a", "b"]))


def test_corrupt_weights_name_the_file_and_the_fix(saved, tmp_path):
    _, path = saved
    for name, data in (("truncated", path.read_bytes()[:100]), ("garbage", b"\xff" * 64), ("empty", b"")):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(data)
        bad.with_suffix(".json").write_bytes(path.with_suffix(".json").read_bytes())
        with pytest.raises(ValueError, match=f"{name}.safetensors are not a readable .safetensors file") as e:
            load_classifier(bad)
        assert "copy it again" in str(e.value) and len(str(e.value).splitlines()) == 1


def test_provenance_round_trips_and_summarises(saved, tmp_path):
    clf, _ = saved
    clf.provenance = {"val_accuracy": 0.8125, "val_data": "/data/CUB/val"}
    try:
        path = save_classifier(clf, tmp_path / "cub.v2")
    finally:
        clf.provenance = {}
    assert path.name == "cub.v2.safetensors"  # dots in a name are kept
    loaded = load_classifier(path)
    assert loaded.provenance["val_accuracy"] == 0.8125
    assert loaded.summary() == "test_resnet, 3 classes, val accuracy 0.812 on val"
    assert "val accuracy unknown" in clf.summary() and "provenance" not in clf.sidecar()


def test_an_ensemble_is_the_mean_of_its_members_log_softmax_and_guides_through_all_of_them():
    from higfa.classifier import ClassifierEnsemble
    from higfa.guidance import classifier_log_prob

    torch.manual_seed(0)
    a = build_classifier("test_resnet", ["Red finch", "blue_finch"], 32).eval()
    b = build_classifier("test_resnet", ["red finch", "Blue Finch"], 48, mean=(0.5,) * 3, std=(0.5,) * 3).eval()
    ens = ClassifierEnsemble([a, b])
    x = torch.rand(3, 3, 40, 40)
    want = (torch.log_softmax(a(x), -1) + torch.log_softmax(b(x), -1)) / 2  # each member at its own size
    torch.testing.assert_close(ens(x), want)
    assert ens.class_names == a.class_names and ens.resolve("blue finch") == 1 and ens.num_classes == 2
    assert ens.architecture == "ensemble(test_resnet+test_resnet)" and ens.summary().startswith("ensemble of 2: ")
    # the guidance path: p and g of the normalised geometric mean, through every member
    z = torch.rand(2, 3, 40, 40)
    target = torch.tensor([0, 1])
    p, g = classifier_log_prob(z, lambda v: v, ens, target, grad=True)
    leaf = z.clone().requires_grad_(True)
    mean = (torch.log_softmax(a(leaf), -1) + torch.log_softmax(b(leaf), -1)) / 2
    lp = torch.log_softmax(mean, -1)[torch.arange(2), target]
    (want_g,) = torch.autograd.grad(lp.sum(), leaf)
    torch.testing.assert_close(p, lp.exp().detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, want_g, rtol=1e-4, atol=1e-7)
    _, ga = classifier_log_prob(z, lambda v: v, a, target, grad=True)
    assert not torch.allclose(g, ga, atol=1e-6)  # not member 1's push alone


def test_an_ensemble_refuses_members_of_other_classes_or_a_single_member():
    from higfa.classifier import ClassifierEnsemble

    a = build_classifier("test_resnet", ["a", "b"], 32)
    with pytest.raises(ValueError, match="member 2 .* other class names"):
        ClassifierEnsemble([a, build_classifier("test_resnet", ["b", "a"], 32)])
    with pytest.raises(ValueError, match="at least 2 members"):
        ClassifierEnsemble([a])
    with pytest.raises(ValueError, match="save its members"):
        ClassifierEnsemble([a, a]).sidecar()
