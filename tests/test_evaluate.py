"""`higfa evaluate`: real vs real + synthetic on tiny ImageFolders (the training loop is higfa.training's)."""

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
import torch

from higfa.jobs import cli
from higfa.jobs.evaluate import ImageSet, load_folder, load_synthetic, paired, replacement_weights, source_index


def shape_image(rng, cls: int, size=40):
    """Class 0: a filled circle, class 1: a filled square; random colours and positions."""
    img = np.full((size, size, 3), int(rng.integers(0, 80)), np.uint8)
    color = tuple(int(x) for x in rng.integers(120, 256, 3))
    c, r = rng.integers(14, 26, 2), int(rng.integers(7, 11))
    if cls == 0:
        cv2.circle(img, (int(c[0]), int(c[1])), r, color, -1)
    else:
        cv2.rectangle(img, (int(c[0]) - r, int(c[1]) - r), (int(c[0]) + r, int(c[1]) + r), color, -1)
    return img


def folder(root, per_class, seed):
    rng = np.random.default_rng(seed)
    for k, name in enumerate(("circle", "square")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / name / f"{i}.png"), shape_image(rng, k))
    return root


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_synthetic_from_an_augment_folder_leaves_out_marked_images(tmp_path):
    out = tmp_path / "aug"
    folder(out / "images", 2, seed=1)
    rows = [{"status": "ok", "label": "circle", "output": "images/circle/0.png", "below_threshold": False},
            {"status": "ok", "label": "circle", "output": "images/circle/1.png", "below_threshold": True},
            {"status": "dropped", "label": "square", "output": None, "below_threshold": True},
            {"status": "ok", "label": "square", "output": "images/square/0.png", "below_threshold": False}]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = load_synthetic(out, 32, ["circle", "square"])
    assert s.images.shape == (2, 32, 32, 3) and s.labels.tolist() == [0, 1]
    assert len(load_synthetic(out, 32, ["circle", "square"], include_below=True).labels) == 3
    with pytest.raises(ValueError, match=r"labels \['square'\] that the real training set does not"):
        load_synthetic(out, 32, ["circle"])


def test_class_folders_must_match_the_real_set(tmp_path):
    folder(tmp_path / "real", 1, seed=0)
    (tmp_path / "test" / "triangle").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "test" / "triangle" / "t.png"), np.zeros((8, 8, 3), np.uint8))
    _, classes = load_folder(tmp_path / "real", 16)
    with pytest.raises(ValueError, match=r"classes \['triangle'\].*same class folder names"):
        load_folder(tmp_path / "test", 16, classes, "test images")


@pytest.mark.slow
def test_evaluate_command_reports_both_arms(tmp_path):
    real, syn, test = folder(tmp_path / "real", 2, 0), folder(tmp_path / "syn", 6, 1), folder(tmp_path / "test", 6, 2)
    (real / "circle" / "broken.png").write_bytes(b"not a png")
    argv = ["evaluate", "--real", real, "--synthetic", syn, "--test", test, "--architecture", "test_resnet",
            "--size", "32", "--steps", "15", "--batch-size", "8", "--seeds", "2", "--threads", "1",
            "--device", "cpu", "--report", tmp_path / "report.json", "--protocol", "concat"]
    runs = []
    for _ in range(2):
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            assert cli.main([str(a) for a in argv]) == 0
        runs.append((json.loads(out.getvalue()), err.getvalue()))
    (headline, log), (again, _) = runs
    assert headline == again  # seeded end to end
    assert "skipped unreadable image" in log and "broken.png" in log and "real + synthetic" in log
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["n_real"], report["n_synthetic"], report["n_test"]) == (4, 12, 12)
    for arm in ("real", "real+synthetic"):
        accs = report[arm]["per_seed"]
        assert len(accs) == 2 and all(0 <= a <= 1 for a in accs)
        assert report[arm]["mean"] == pytest.approx(np.mean(accs)) and headline[arm] == report[arm]["mean"]
        assert all(a * 12 == pytest.approx(round(a * 12)) for a in accs)  # accuracies of 12 test images
    assert report["delta"] == pytest.approx(report["real+synthetic"]["mean"] - report["real"]["mean"])


def test_replacement_weights_follow_saspa():
    real = np.array([0, 0, 1, 1])
    # image 0 has two variants, image 1 one, image 2 none, and one class-1 image of unknown source
    syn_labels, source = np.array([0, 0, 0, 1]), np.array([0, 0, 1, -1])
    w = replacement_weights(real, syn_labels, source, alpha=0.4)
    n = 4
    assert w[:4] == pytest.approx([0.6 / n, 0.6 / n, 0.6 / n, 0.6 / n])  # class 1 has an unknown-source variant
    # image 0's α/n split over its two variants; image 1's α/n to its one; the class-1 variant stands for 2 reals
    assert w[4:] == pytest.approx([0.2 / n, 0.2 / n, 0.4 / n, 2 * 0.4 / n])
    assert w.sum() == pytest.approx(1.0)
    # no variants at all: every real image keeps 1/n
    assert replacement_weights(real, np.array([0]), np.array([0]), 0.4)[2:4] == pytest.approx([1 / n, 1 / n])
    lw = replacement_weights(real, syn_labels, source, 0.4, label_weights=np.array([0.5, 1.0, np.nan, 0.0]))
    assert lw[4:] == pytest.approx([0.1 / n, 0.2 / n, 0.4 / n, 0.0])  # nan (no confidence) counts as 1
    with pytest.raises(ValueError, match="--alpha 1.5"):
        replacement_weights(real, syn_labels, source, 1.5)
    with pytest.raises(ValueError, match="source indices below 4"):
        replacement_weights(real, syn_labels, np.array([0, 0, 9, 1]), 0.4)


def test_paired_differences_and_their_interval():
    d = paired([0.8, 0.9, 0.7], [0.7, 0.7, 0.6])
    assert d["per_seed"] == pytest.approx([0.1, 0.2, 0.1]) and d["mean"] == pytest.approx(0.4 / 3)
    half = 4.303 * np.std([0.1, 0.2, 0.1], ddof=1) / np.sqrt(3)
    assert d["ci95"] == pytest.approx([0.4 / 3 - half, 0.4 / 3 + half], abs=1e-4)
    assert paired([0.5], [0.4])["ci95"] is None


def test_manifest_sources_map_onto_the_real_images(tmp_path):
    real, _ = load_folder(folder(tmp_path / "real", 2, seed=0), 16)
    assert real.ids == ["circle/0.png", "circle/1.png", "square/0.png", "square/1.png"]
    out = tmp_path / "aug"
    folder(out / "images", 1, seed=1)
    rows = [{"status": "ok", "label": "circle", "output": "images/circle/0.png", "source": "circle/1.png",
             "confidence": 0.25},
            {"status": "ok", "label": "square", "output": "images/square/0.png", "source": "elsewhere.png",
             "confidence": None}]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    syn = load_synthetic(out, 16, ["circle", "square"])
    assert source_index(real, syn).tolist() == [1, -1]
    assert syn.confidence[0] == 0.25 and np.isnan(syn.confidence[1])
    plain = ImageSet(syn.images, syn.labels, [])
    assert source_index(real, plain).tolist() == [-1, -1]


@pytest.mark.slow
def test_saspa_protocol_trains_the_same_epochs_per_arm(tmp_path):
    real, syn, test = folder(tmp_path / "real", 2, 0), folder(tmp_path / "syn", 6, 1), folder(tmp_path / "test", 3, 2)
    argv = ["evaluate", "--real", real, "--synthetic", syn, "--test", test, "--architecture", "test_resnet",
            "--size", "32", "--epochs", "8", "--batch-size", "4", "--seeds", "2", "--threads", "1",
            "--device", "cpu", "--report", tmp_path / "report.json"]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        assert cli.main([str(a) for a in argv]) == 0
    assert "(saspa, alpha 0.4)" in err.getvalue() and "used as variants of their class" in err.getvalue()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["protocol"] == "saspa" and report["alpha"] == 0.4
    assert report["real"]["steps"] == report["real+synthetic"]["steps"] == 8  # 8 epochs x 4 real images / 4
    assert len(report["paired"]["per_seed"]) == 2 and len(report["paired"]["ci95"]) == 2
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):  # --steps and --epochs exclude
        cli.main([str(a) for a in argv + ["--steps", "3"]])
