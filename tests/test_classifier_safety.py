"""The classifier commands as a careless or hostile user meets them (issue 27): a user's NAME.ckpt or NAME.json
beside --out is never unpickled, replaced or deleted; an existing classifier is replaced only with --overwrite;
every bad option is one line; the resume file is written by time or every N steps; what ran is what the
sidecar records."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from classifier_support import SPECIES, TINY, species_folder
from higfa.jobs.cli import main
from higfa.jobs.dataset import save_image
from higfa.world.birds import TinyBirds

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return species_folder(tmp_path_factory.mktemp("data") / "train")


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny"
    assert main(["train-classifier", "--data", str(folder), "--steps", "2", "--val-fraction", "0", "--out", str(out),
                 *TINY]) == 0
    return out.with_suffix(".safetensors")


class _Payload:
    """A pickle that, when loaded with weights_only=False, writes a file: proof that unpickling ran code."""

    def __init__(self, proof: Path):
        self.proof = proof

    def __reduce__(self):
        return (Path.write_text, (self.proof, "pwned"))


def _hostile_pickle(path: Path, proof: Path) -> bytes:
    path.write_bytes(pickle.dumps({"config": {}, "step": 1, "x": _Payload(proof)}))
    return path.read_bytes()


def _train(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["train-classifier", "--data", str(folder), "--steps", "2", "--val-fraction", "0", "--out", str(out),
            *TINY, *extra]


def _one_line_error(capsys, expect: str) -> str:
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------- item 1: the resume file
def test_a_users_ckpt_beside_out_is_never_unpickled_nor_deleted(folder, tmp_path, capsys):
    """NAME.ckpt is the extension of single-file SD checkpoints: train-classifier neither loads nor removes it."""
    out, proof = tmp_path / "NAME", tmp_path / "proof.txt"
    ckpt = out.with_name("NAME.ckpt")
    data = _hostile_pickle(ckpt, proof)
    assert main(_train(folder, out)) == 0
    assert main(_train(folder, out, "--overwrite")) == 0
    assert ckpt.read_bytes() == data and not proof.exists()
    assert not out.with_name("NAME.resume.pt").exists()


def test_a_resume_file_this_command_did_not_write_is_neither_loaded_nor_removed(folder, tmp_path, capsys):
    out, proof = tmp_path / "NAME", tmp_path / "proof.txt"
    resume = out.with_name("NAME.resume.pt")
    data = _hostile_pickle(resume, proof)
    for extra in ((), ("--overwrite",)):
        assert main(_train(folder, out, *extra)) == 2
        _one_line_error(capsys, "is not a resume file of `higfa train-classifier`")
    assert resume.read_bytes() == data and not proof.exists() and not out.with_suffix(".safetensors").exists()
    # a file of the training loop written for another purpose (no train-classifier marker) is not ours either
    from higfa.training import CHECKPOINT_FORMAT

    torch.save({"format": CHECKPOINT_FORMAT, "config": {"command": "something else"}, "step": 1}, resume)
    assert main(_train(folder, out, "--overwrite")) == 2 and resume.exists()
    capsys.readouterr()


def test_no_torch_load_unpickles_code_in_the_pack():
    """Every torch.load call in higfa/ and nodes/ passes weights_only=True, or a comment on the line above says
    why the file can only be the project's own (issue 27). Calls are found in the syntax tree, not the text."""
    import ast

    bad = []
    for path in sorted([*ROOT.glob("higfa/**/*.py"), *ROOT.glob("nodes/**/*.py")]):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            f = node.func if isinstance(node, ast.Call) else None
            if not (isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name)
                    and f.value.id == "torch"):
                continue
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            justified = node.lineno > 1 and "project's own" in lines[node.lineno - 2]
            if not (safe or justified):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not bad, "torch.load without weights_only=True:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------- item 2: --out of all three commands
def _foreign_json(path: Path) -> bytes:
    path.write_text(json.dumps({"my": "own notes", "architecture": "resnet50"}))
    return path.read_bytes()


def test_train_classifier_never_replaces_a_json_it_did_not_write(folder, tmp_path, capsys):
    out = tmp_path / "mine"
    data = _foreign_json(out.with_suffix(".json"))
    for extra in ((), ("--overwrite",)):
        assert main(_train(folder, out, *extra)) == 2
        _one_line_error(capsys, "is not a classifier sidecar written by higfa")
    assert out.with_suffix(".json").read_bytes() == data and not out.with_suffix(".safetensors").exists()


def _import_args(trained: Path, out: Path, *extra: str) -> list[str]:
    return ["import-classifier", "--checkpoint", str(trained), "--architecture", "test_resnet", "--class-names",
            str(trained.with_suffix(".names.json")), "--input-size", "32", "--out", str(out),
            *extra]


def test_import_classifier_refuses_an_existing_classifier_unless_overwrite(trained, tmp_path, capsys):
    trained.with_suffix(".names.json").write_text(json.dumps(sorted(SPECIES)))
    out = tmp_path / "imported"
    assert main(_import_args(trained, out)) == 0
    before = out.with_suffix(".safetensors").read_bytes()
    assert main(_import_args(trained, out)) == 2
    _one_line_error(capsys, "imported.safetensors exists already; pass --overwrite")
    assert out.with_suffix(".safetensors").read_bytes() == before
    assert main(_import_args(trained, out, "--overwrite")) == 0
    other = tmp_path / "other"
    data = _foreign_json(other.with_suffix(".json"))
    assert main(_import_args(trained, other, "--overwrite")) == 2
    _one_line_error(capsys, "is not a classifier sidecar written by higfa")
    assert other.with_suffix(".json").read_bytes() == data


def test_tune_classifier_refuses_an_existing_classifier_unless_overwrite(trained, folder, tmp_path, capsys):
    import higfa.jobs.tuning as tuning

    def no_tuning(*a, **k):
        raise AssertionError("tuning started")

    out = tmp_path / "tuned"
    out.with_suffix(".safetensors").write_bytes(trained.read_bytes())
    out.with_suffix(".json").write_bytes(trained.with_suffix(".json").read_bytes())
    before = out.with_suffix(".safetensors").read_bytes()
    argv = ["tune-classifier", str(trained), "--data", str(folder), "--model", "builtin", "--out", str(out),
            "--no-progress"]
    tuning.tune_guide, saved = no_tuning, tuning.tune_guide
    try:
        assert main(argv) == 2
        _one_line_error(capsys, "tuned.safetensors exists already; pass --overwrite")
        data = _foreign_json(out.with_suffix(".json"))
        assert main([*argv, "--overwrite"]) == 2
        _one_line_error(capsys, "is not a classifier sidecar written by higfa")
        assert main([*argv, "--threads", "0"]) == 2
        capsys.readouterr()
    finally:
        tuning.tune_guide = saved
    assert out.with_suffix(".safetensors").read_bytes() == before and out.with_suffix(".json").read_bytes() == data


# ---------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("extra, expect", [
    (["--model-kwargs", "[1]"], "--model-kwargs '[1]': must be a JSON object"),
    (["--model-kwargs", "{bad"], "--model-kwargs '{bad': not valid JSON"),
    (["--threads", "0"], "--threads 0: must be >= 1"),
    (["--input-size", "65536"], "--input-size 65536: an input size must be whole pixels in [8, 2048]"),
    (["--checkpoint-every", "0"], "--checkpoint-every 0: must be >= 1"),
    (["--val-fraction", "1"], "--val-fraction 1.0: must lie in [0, 1)"),
])
def test_train_classifier_bad_options_are_one_line_errors_before_anything_is_written(folder, tmp_path, capsys,
                                                                                     extra, expect):
    assert main(_train(folder, tmp_path / "o", *extra)) == 2
    _one_line_error(capsys, expect)
    assert list(tmp_path.iterdir()) == []


def test_a_sidecar_input_size_out_of_bounds_is_refused_at_load(trained, tmp_path):
    from higfa.classifier import load_classifier

    bad = tmp_path / "huge.safetensors"
    bad.write_bytes(trained.read_bytes())
    side = json.loads(trained.with_suffix(".json").read_text())
    for size in (65536, [3, 32, 100000], "224", 0):
        side["input_size"] = size
        bad.with_suffix(".json").write_text(json.dumps(side))
        with pytest.raises(ValueError, match=r"input_size .*whole pixels in \[8, 2048\]"):
            load_classifier(bad)


def test_classes_with_one_image_hold_out_nothing_and_write_valid_json(tmp_path, capsys):
    world = TinyBirds()
    split = world.split("fewshot", 1)
    data = tmp_path / "one"
    for name in SPECIES:
        save_image(data / name / "im0.png", split.images[split.labels == world.class_names.index(name)][0])
    out = tmp_path / "single"
    assert main(["train-classifier", "--data", str(data), "--steps", "2", "--out", str(out), *TINY]) == 0
    said = capsys.readouterr().out
    assert "nothing is held out" in said and "no val set" in said
    text = out.with_suffix(".json").read_text()
    prov = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the sidecar"))["provenance"]
    assert "val_accuracy" not in prov and prov["val_data"] is None and prov["train_images"] == 3


# ---------------------------------------------------------------------------- what ran, and how often it is saved
def test_val_fraction_hold_out_is_said_and_provenance_records_steps_not_epochs(folder, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["train-classifier", "--data", str(folder), "--steps", "3", "--out", str(out), *TINY]) == 0
    said = capsys.readouterr().out
    assert "holding out 3 of 12 images (--val-fraction 0.1 per class, seed 0)" in said, said
    prov = json.loads(out.with_suffix(".json").read_text())["provenance"]
    assert prov["steps"] == 3 and "epochs" not in prov and prov["train_images"] == 9 and prov["val_images"] == 3
    assert main(["train-classifier", "--data", str(folder), "--epochs", "2", "--val-fraction", "0", "--out",
                 str(tmp_path / "e"), *TINY]) == 0
    prov = json.loads((tmp_path / "e.json").read_text())["provenance"]
    assert prov["epochs"] == 2 and prov["steps"] == 2 * math.ceil(12 / 4)
    with pytest.raises(SystemExit):  # argparse: --epochs and --steps are one choice
        main(["train-classifier", "--data", str(folder), "--epochs", "2", "--steps", "3", "--out",
              str(tmp_path / "both"), *TINY])


def test_resume_file_is_written_by_time_or_every_n_steps_not_every_epoch(folder, tmp_path, monkeypatch):
    import higfa.training as training

    saved: list[int] = []
    real = training._save_checkpoint
    monkeypatch.setattr(training, "_save_checkpoint", lambda path, state: (saved.append(state["step"]),
                                                                           real(path, state)))
    # 10 epochs of 3 steps: the old rule wrote 9 checkpoints; by time (10 minutes) none in a short run
    assert main(_train(folder, tmp_path / "t", "--steps", "30")) == 0
    assert saved == []
    assert main(_train(folder, tmp_path / "n", "--steps", "30", "--checkpoint-every", "10")) == 0
    assert saved == [10, 20]
    saved.clear()
    clock = iter(range(0, 10_000, 61))  # each step "takes" 61 s: --checkpoint-minutes 2 saves every second step
    monkeypatch.setattr(training.time, "perf_counter", lambda: float(next(clock)))
    assert main(_train(folder, tmp_path / "m", "--steps", "7", "--checkpoint-minutes", "2")) == 0
    assert saved == [2, 4, 6]


def test_threads_option_sets_torch_threads_like_augment(folder, tmp_path):
    n = torch.get_num_threads()
    try:
        assert main(_train(folder, tmp_path / "th", "--threads", "1")) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)


def test_sigterm_says_the_checkpoint_is_intact_and_how_to_resume(folder, tmp_path):
    out = tmp_path / "term"
    args = ["train-classifier", "--data", str(folder), "--steps", "100000", "--val-fraction", "0", "--out", str(out),
            "--checkpoint-every", "2", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "higfa", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    resume = out.with_name("term.resume.pt")
    deadline = time.time() + 240
    while not resume.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    step = int(torch.load(resume, weights_only=True)["step"])
    assert f"The checkpoint {resume} (step {step}) is intact: rerun the same command to resume" in err, err


def test_the_docs_commands_for_the_built_in_world_are_the_benchs():
    """docs/classifiers.md's commands for the bench's guides use exactly benchmarks/quality/guides.py's recipe, and
    every option they name exists (argparse accepts them)."""
    import re
    import shlex

    from benchmarks.quality.guides import BOOT, TUNE
    from higfa.jobs.cli import build_parser

    text = (ROOT / "docs" / "classifiers.md").read_text()
    section = text[text.index("### The built-in world's guides, as the bench makes them"):]
    commands = [shlex.split(c.replace("\\\n", " ")) for c in re.findall(r"^higfa (?:[^\n]*\\\n)*[^\n]*", section, re.M)]
    train, tune = (next(c for c in commands if c[1] == name) for name in ("train-classifier", "tune-classifier"))
    parser = build_parser()
    t, u = parser.parse_args(train[1:]), parser.parse_args(tune[1:])
    assert (t.steps, t.seed, t.augment, t.val_fraction, t.alpha, t.architecture, t.input_size) == (
        BOOT["steps"], BOOT["seed"], "robust", 0.0, 0.4, "test_resnet", 64)
    from higfa.jobs.guides import augment_preset

    robust = augment_preset("robust")
    assert (robust.noise, robust.blur) == (BOOT["noise"], BOOT["blur"])
    assert (u.data, u.epochs, u.views, u.lr, u.seed, u.model) == (TUNE["data"], TUNE["epochs"], TUNE["views"],
                                                                  TUNE["lr"], TUNE["seed"], "builtin")
    assert u.adversarial == 0.031 and "tune=0.031" in (ROOT / "Makefile").read_text()
