"""`higfa evaluate`: real vs real + synthetic on tiny ImageFolders (the training loop is higfa.training's)."""

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
import torch

from higfa.jobs import cli
from higfa.jobs.evaluate import load_folder, load_synthetic


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
            "--device", "cpu", "--report", tmp_path / "report.json"]
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
