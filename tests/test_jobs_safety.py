"""`higfa augment` / `higfa evaluate` as a careless or hostile user runs them, round 2 (issue 27 items 3, 4, 7 and
its one-line errors): the --overwrite clean-up stays inside OUT/images|traces|dropped after resolving; evaluate
reads only images inside --synthetic; every bad number or device is one line before anything is written; the
folder is claimed only after everything was checked and built."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from higfa.jobs import cli, records
from higfa.jobs.evaluate import load_synthetic

from augment_support import args_for, run_cli


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _one_line(rc: int, err: str, start: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and start in lines[0] and "Traceback" not in err, err


# ---------------------------------------------------------------------------- item 3: --overwrite's clean-up
def _old_run(out: Path, outputs: list[str]) -> None:
    """OUT as an earlier run left it: run.json of run 'old', a part file listing `outputs`."""
    records.write_json(out / records.RUN_FILE, {"hash": "new", "fingerprint": {}, "file_cache": {}})
    (out / records.PARTS).mkdir(parents=True)
    rows = [{"key": f"k{i}", "run": "old", "status": "ok", "output": o, "trace": None} for i, o in enumerate(outputs)]
    (out / records.PARTS / "rank-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_overwrite_clean_up_resolves_paths_before_removing(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside.txt"
    (out / "images" / "a").mkdir(parents=True)
    (out / "images" / "a" / "stale.png").write_bytes(b"old image")
    (out / "keepme.txt").write_text("the user's")
    outside.write_text("not ours")
    (out / "images" / "link.png").symlink_to(outside)
    _old_run(out, ["images/a/stale.png", "images/../keepme.txt", "images/a/../../keepme.txt",
                   "images/../../outside.txt", "images/link.png", str(outside), "traces/../run.json"])
    records.merge(out)
    assert not (out / "images" / "a" / "stale.png").exists()  # an old run's image: removed
    assert (out / "keepme.txt").read_text() == "the user's" and outside.read_text() == "not ours"
    assert (out / "images" / "link.png").is_symlink() and (out / records.RUN_FILE).is_file()


def test_a_folder_whose_run_produced_nothing_is_taken_over_without_overwrite(tmp_path):
    """Item 7: a run killed before its first item (e.g. out of memory) must not block the corrected rerun."""
    out = tmp_path / "out"
    records.check_run(out, {"size": 65536}, overwrite=False)
    assert records.check_run(out, {"size": 512}, overwrite=False) == records.fingerprint_hash({"size": 512})
    (out / "images").mkdir()
    (out / "images" / "x.png").write_bytes(b"an image of the 512 run")
    with pytest.raises(ValueError, match="holds the outputs of a different run"):
        records.check_run(out, {"size": 256}, overwrite=False)


# ---------------------------------------------------------------------------- item 4: evaluate's manifest
def _augment_folder(root: Path, rows: list[dict]) -> Path:
    (root / "images" / "circle").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "circle" / "0.png"), np.zeros((16, 16, 3), np.uint8))
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_evaluate_reads_only_images_inside_the_synthetic_folder(tmp_path):
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    cv2.imwrite(str(secret), np.full((16, 16, 3), 255, np.uint8))
    ok = {"status": "ok", "label": "circle", "output": "images/circle/0.png"}
    for bad in ("../outside/secret.png", str(secret), "images/../../outside/secret.png"):
        syn = _augment_folder(tmp_path / f"syn{len(bad)}", [ok, {**ok, "output": bad}])
        with pytest.raises(ValueError, match=r"line 2: output .* leaves the --synthetic folder"):
            load_synthetic(syn, 16, ["circle"])
    syn = _augment_folder(tmp_path / "missing", [ok, {"status": "ok", "label": "circle"}])
    with pytest.raises(ValueError, match=r"line 2: an 'ok' row needs 'output'"):
        load_synthetic(syn, 16, ["circle"])
    assert len(load_synthetic(_augment_folder(tmp_path / "fine", [ok]), 16, ["circle"]).labels) == 1


def _shapes(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for name in ("circle", "square"):
        (root / name).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / name / f"{i}.png"), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    return root


def _evaluate(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(["evaluate", *argv])
    return rc, err.getvalue()


@pytest.mark.parametrize("option, value", [("--seeds", "0"), ("--size", "0"), ("--size", "65536"), ("--epochs", "0"),
                                           ("--steps", "0"), ("--threads", "0"), ("--batch-size", "0")])
def test_evaluate_bad_numbers_are_one_line_errors(tmp_path, option, value):
    real = _shapes(tmp_path / "real", 1)
    rc, err = _evaluate("--real", str(real), "--synthetic", str(real), "--test", str(real), option, value,
                        "--report", str(tmp_path / "r.json"))
    _one_line(rc, err, f"higfa evaluate: error: {option} {value}")
    assert not (tmp_path / "r.json").exists()


def test_evaluate_warns_when_test_is_the_training_folder_and_honours_threads(tmp_path):
    real = _shapes(tmp_path / "real", 2)
    rc, err = _evaluate("--real", str(real), "--synthetic", str(real), "--test", str(real) + "/", "--steps", "1",
                        "--seeds", "1", "--size", "16", "--architecture", "test_resnet", "--threads", "1")
    assert rc == 0 and "warning: --test" in err and "is the --real training folder" in err, err
    assert torch.get_num_threads() == 1


# ---------------------------------------------------------------------------- augment: one line, nothing written
@pytest.mark.parametrize("option, value, start", [
    ("--size", "65536", "--size 65536: must be a multiple of the model's latent grid between 8 and 4096"),
    ("--device", "tpu", "--device tpu: not a device torch knows"),
    ("--scheduler-options", '{"num_train_timesteps": -5}', "num_train_timesteps must be a whole number"),
    ("--scheduler-options", '{"beta_start": "x"}', "the DDIMScheduler rejects them"),
])
def test_augment_bad_options_are_one_line_errors_before_anything_is_written(world, tmp_path, option, value, start):
    rc, err = run_cli(args_for(world, tmp_path / "out", option, value))
    _one_line(rc, err, start)
    assert not (tmp_path / "out").exists()


def test_guidance_vae_that_is_not_a_decoder_is_one_line(world, tmp_path):
    for name, data in (("notes.pth", b"hello, not a decoder\n"), ("cfg.bin", b'{"a": 1}'),
                       ("broken.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")):
        (tmp_path / name).write_bytes(data)
        rc, err = run_cli(args_for(world, tmp_path / "out", "--guidance-vae", str(tmp_path / name)))
        _one_line(rc, err, f"--guidance-vae {tmp_path / name}: not a TAESD decoder file")
        assert not (tmp_path / "out").exists()
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    rc, err = run_cli(args_for(world, tmp_path / "out", "--guidance-vae", str(tmp_path / "folder")))
    _one_line(rc, err, "not a loadable AutoencoderKL folder")


def test_the_folder_is_claimed_only_after_everything_is_built(world, tmp_path, monkeypatch):
    """Item 7: a failure while the sampler is built (the last check before sampling) leaves no run.json behind."""
    import higfa.jobs.job as job

    def refuse(*a, **k):
        raise ValueError("stand-in for a check made while the sampler is built")

    monkeypatch.setattr(job, "ItemSampler", refuse)
    rc, err = run_cli(args_for(world, tmp_path / "out"))
    assert rc == 2 and "stand-in" in err and not (tmp_path / "out").exists(), err
