"""`higfa augment` as a careless or hostile user runs it (CLI side): each test reproduces one
probe and asserts the clear error or the safe result, and that nothing outside --out was written.

Shares test_augment's tiny model, classifier and dataset (tests/augment_support.py, tests/conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from higfa.jobs import cli, safety
from higfa.files import atomic_write_bytes
from higfa.jobs.dataset import class_name_from_label, read_manifest, safe_label

from augment_support import (CLASSES, args_for, images, make_image, make_world, manifest, run_cli,  # noqa: E402
                             snapshot, start_augment, subprocess_env, wait_for_records, write_dataset)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("safety"))


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


FAST = ("--variants", "1", "--limit", "2")  # 2 items: enough to see a folder's behaviour


def tree(root: Path) -> set[str]:
    """Every path below `root` (to see that nothing appeared where it should not)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


# ---------------------------------------------------------------------------- 3: labels as folder names
@pytest.mark.parametrize("label, why", [("../../../escaped_label", "path separator"), ("..", "parent"),
                                        ("", "empty"), ("a\\b", "path separator"), (".hidden", "hidden"),
                                        ("bad\x00name", "control character"), ("x" * 256, "255 bytes")])
def test_safe_label_refuses_what_is_not_one_folder_name(label, why):
    with pytest.raises(ValueError, match=why):
        safe_label(label)


def test_safe_label_keeps_plain_names():
    for label in ("001.Black_footed_Albatross", "class_0", "Red Cardinal", "ünïcode-名"):
        assert safe_label(label) == label


def test_manifest_label_that_leaves_out_is_refused(world, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cv2.imwrite(str(data / "a.png"), make_image(np.random.default_rng(0)))
    (data / "m.csv").write_text("path,label\na.png,../../../escaped_label\n")
    (tmp_path / "names.txt").write_text("../../../escaped_label\tRed Cardinal\n")
    out = tmp_path / "run" / "out"
    before = tree(tmp_path.parent)
    rc, err = run_cli(args_for(world, out, "--class-names", tmp_path / "names.txt", data=data / "m.csv"))
    assert rc == 2 and "'../../../escaped_label' can't be a folder name" in err and "a.png" in err, err
    assert tree(tmp_path.parent) == before  # nothing written anywhere, --out not even created


# ---------------------------------------------------------------------------- 4: model files edited in place
@pytest.mark.slow
def test_model_or_classifier_edited_in_place_is_refused_naming_the_file(world, tmp_path):
    from safetensors.torch import load_file, save_file

    model, weights = tmp_path / "model", tmp_path / "birds.safetensors"
    shutil.copytree(world["model"], model)
    shutil.copy(world["classifier"], weights)
    shutil.copy(Path(world["classifier"]).with_suffix(".json"), weights.with_suffix(".json"))
    argv = args_for(world, tmp_path / "out", *FAST)
    argv[argv.index("--model") + 1], argv[argv.index("--classifier") + 1] = str(model), str(weights)
    rc, err = run_cli(argv)
    assert rc == 0, err
    before = snapshot(tmp_path / "out")

    unet = model / "unet" / "diffusion_pytorch_model.safetensors"
    original = unet.read_bytes()
    state = load_file(unet)
    name = min(state)
    state[name] = state[name] * 1.5  # the probe: scale one tensor of a copied model folder
    save_file(state, unet)
    rc, err = run_cli(argv)
    assert rc == 2 and f"model file {unet.resolve()} changed since the run" in err and "--overwrite" in err, err
    assert snapshot(tmp_path / "out") == before

    unet.write_bytes(original)  # restored: the run resumes (new mtime, same content)
    rc, err = run_cli(argv)
    assert rc == 0 and "2 already done" in err, err
    cls = load_file(weights)
    key = max(cls)
    cls[key] = cls[key] + 1
    save_file(cls, weights)
    rc, err = run_cli(argv)
    assert rc == 2 and f"model file {weights.resolve()} changed" in err, err
    rc, err = run_cli(argv + ["--overwrite"])
    assert rc == 0 and "2 images written" in err, err


def test_content_digest_is_cached_by_size_mtime_ctime_and_inode_and_samples_big_files(tmp_path, monkeypatch):
    import time

    f = tmp_path / "w.bin"
    f.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    digests, cache = safety.content_fingerprint([f])
    calls = []
    monkeypatch.setattr(safety, "file_digest", lambda p, real=safety.file_digest: calls.append(p) or real(p))
    assert safety.content_fingerprint([f], cache)[0] == digests and calls == []  # unchanged: the cache answers
    st = f.stat()
    time.sleep(0.01)  # the change time moves on every write (coarse clocks: give it a tick)
    f.write_bytes(bytes(255 - b for b in range(256)) * 4096)  # edited in place: same size, other content ...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime put back (issue 27 item 5)
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    assert safety.content_fingerprint([f], cache)[0] != digests  # the change time gives it away
    replacement = tmp_path / "w2.bin"
    replacement.write_bytes(f.read_bytes())
    digests, cache = safety.content_fingerprint([f])
    replacement.replace(f)  # another file under the same name: a new inode
    assert cache[str(f)][3] != f.stat().st_ino
    calls.clear()
    assert safety.content_fingerprint([f], cache)[0] == digests and calls == [f]  # rehashed (same bytes here)
    monkeypatch.setattr(safety, "FULL_HASH_BYTES", 1000)  # pretend the file is huge: sampled blocks
    monkeypatch.setattr(safety, "BLOCK", 4096)
    sampled = safety.file_digest(f)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 1  # a byte inside the middle sampled block
    f.write_bytes(bytes(data))
    assert safety.file_digest(f) != sampled


# ---------------------------------------------------------------------------- 5: --out / --data nesting
def test_out_inside_data_and_data_inside_out_are_refused_before_models_load(world, tmp_path):
    data = write_dataset(tmp_path / "data")
    before = snapshot(data)
    rc, err = run_cli(args_for(world, data / "augmented", data=data))
    assert rc == 2 and "is inside --data" in err and "read the generated images back" in err, err
    assert snapshot(data) == before and not (data / "augmented").exists()
    rc, err = run_cli(args_for(world, tmp_path, data=data))
    assert rc == 2 and "--data" in err and "is inside --out" in err, err
    assert snapshot(data) == before and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    (tmp_path / "out" / "images").mkdir(parents=True)  # a manifest that lists an image inside --out
    cv2.imwrite(str(tmp_path / "out" / "images" / "x.png"), make_image(np.random.default_rng(1)))
    (tmp_path / "m.csv").write_text(f"path,label\n{tmp_path / 'out' / 'images' / 'x.png'},{CLASSES[0]}\n")
    rc, err = run_cli(args_for(world, tmp_path / "out", data=tmp_path / "m.csv"))
    assert rc == 2 and "is inside --out" in err and "its own outputs" in err, err
    assert tree(tmp_path / "out") == {"images", "images/x.png"}


# ---------------------------------------------------------------------------- 6: --overwrite
@pytest.mark.slow
def test_overwrite_leaves_exactly_this_runs_outputs(world, tmp_path):
    out = tmp_path / "out"
    rc, err = run_cli(args_for(world, out, "--limit", "2"))  # 2 images x 2 variants
    assert rc == 0, err
    assert {k.rsplit("_", 1)[1] for k in images(out)} == {"v0.png", "v1.png"}
    rc, err = run_cli(args_for(world, out, "--limit", "2", "--variants", "1", "--steps", "4", "--overwrite"))
    assert rc == 0, err
    recs = manifest(out)
    assert sorted(images(out)) == sorted(r["output"] for r in recs) and len(recs) == 2
    assert all(k.endswith("_v0.png") for k in images(out))
    assert sorted(p.relative_to(out).as_posix() for p in (out / "traces").rglob("*.json")) == \
        sorted(r["trace"] for r in recs)
    # the same settings with fewer variants: the same run, and --overwrite still leaves only its items
    rc, err = run_cli(args_for(world, out, "--limit", "2", "--variants", "2", "--steps", "4"))
    assert rc == 0 and len(images(out)) == 4, err
    rc, err = run_cli(args_for(world, out, "--limit", "2", "--variants", "1", "--steps", "4", "--overwrite"))
    assert rc == 0 and "2 already done" in err, err
    assert sorted(images(out)) == sorted(r["output"] for r in manifest(out)) and len(images(out)) == 2


def test_overwrite_is_explained_in_help_and_refuses_a_foreign_folder(world, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["augment", "--help"])
    assert "holds exactly this run's outputs" in " ".join(capsys.readouterr().out.split())
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("not higfa's")
    rc, err = run_cli(args_for(world, out, *FAST, "--overwrite"))
    assert rc == 2 and "not written by `higfa augment`" in err
    assert tree(out) == {"mine.txt"}


# ---------------------------------------------------------------------------- 7: one writer per shard
@pytest.mark.slow
def test_second_run_on_the_same_out_is_refused_naming_the_holder(world, tmp_path):
    out = tmp_path / "out"
    first = start_augment(world, out)
    try:
        wait_for_records(first, out, 1)
        rc, err = run_cli(args_for(world, out))
        assert rc == 2 and f"being written by pid {first.pid} on host {socket.gethostname()}" in err, err
    finally:
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0 and "8 images written" in first_err, first_err
    assert not list(out.glob(".lock*"))


def test_a_lock_left_by_a_killed_process_is_taken_over(world, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from higfa.jobs.safety import ShardLock; ShardLock(Path(sys.argv[1]), 0, 1).acquire(); "
                               "print('locked', flush=True); time.sleep(600)", str(out)],
                              env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(safety.LockedError, match=f"pid {holder.pid} on host"):
            safety.ShardLock(out, 0, 1).acquire()
        assert safety.ShardLock(out, 1, 2).acquire().release() is None  # another shard is free
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".lock-rank-00000-of-00001").is_file()  # SIGKILL: the file stays, the lock does not
    lock = safety.ShardLock(out, 0, 1).acquire()
    assert lock.took_over["pid"] == holder.pid
    lock.release()
    assert not (out / ".lock-rank-00000-of-00001").exists()


def test_a_file_system_without_locks_runs_unguarded_and_says_so(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = safety.ShardLock(tmp_path, 0, 1).acquire()
    assert lock.unsupported and json.loads((tmp_path / ".lock-rank-00000-of-00001").read_text())["pid"] == os.getpid()
    lock.release()
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- 8: file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a" / "f.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "f.bin").stat().st_mode) == mode


@pytest.mark.slow
def test_every_file_of_a_run_honours_the_umask(world, tmp_path):
    old = os.umask(0o022)
    try:
        rc, err = run_cli(args_for(world, tmp_path / "out", *FAST))
    finally:
        os.umask(old)
    assert rc == 0, err
    modes = {p.relative_to(tmp_path / "out").as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert {"run.json", "plan.json", "manifest.jsonl", "summary.json"} <= set(modes)
    assert any(k.endswith(".png") for k in modes) and any(k.startswith("parts/") for k in modes)
    assert {k: m for k, m in modes.items() if m != 0o644} == {}


# ---------------------------------------------------------------------------- 9: user errors
@pytest.mark.parametrize("option, value", [
    ("--steps", "0"), ("--variants", "0"), ("--batch-size", "0"), ("--limit", "0"), ("--eta", "-1"),
    ("--eta", "nan"), ("--size", "0"), ("--threads", "0"), ("--canny-low", "300"), ("--edge-blur", "-1"),
    ("--contour-amount", "2"), ("--min-confidence", "1.5"), ("--min-confidence", "inf"),
    ("--scheduler-options", "{bad"), ("--scheduler-options", "[1]")])
def test_bad_numbers_are_one_line_errors_before_anything_is_written(world, tmp_path, option, value):
    rc, err = run_cli(args_for(world, tmp_path / "out", option, value))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"higfa augment: error: {option}"), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_a_size_the_model_cannot_take_is_refused_before_models_load(world, tmp_path, monkeypatch):
    import higfa.backends.components as components

    def no_loading(*a, **k):
        raise AssertionError("models were loaded")

    monkeypatch.setattr(components, "load_components", no_loading)
    rc, err = run_cli(args_for(world, tmp_path / "out", "--size", "60"))
    assert rc == 2 and "--size 60: must be a multiple of" in err and not (tmp_path / "out").exists(), err


def test_an_out_that_cannot_be_written_is_refused_before_models_load(world, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    rc, err = run_cli(args_for(world, tmp_path / "file" / "out"))
    assert rc == 2 and "is not a folder" in err and "--out" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ValueError, match="is not a folder"):  # --debug: the traceback, for a bug report
        cli.main(["--debug"] + [str(a) for a in args_for(world, tmp_path / "file" / "out")])
    if os.geteuid() != 0:  # root may write anywhere; a read-only folder only stops other users
        (tmp_path / "ro").mkdir(mode=0o500)
        rc, err = run_cli(args_for(world, tmp_path / "ro" / "out"))
        assert rc == 2 and "is not writable" in err, err


# ---------------------------------------------------------------------------- 10: empty label cells
def test_empty_label_cell_names_the_row(world, tmp_path):
    data = write_dataset(tmp_path / "data")
    (tmp_path / "m.csv").write_text(f"path,label\n{data / CLASSES[0] / 'img0.jpg'},{CLASSES[0]}\n"
                                    f"{data / CLASSES[0] / 'img1.png'},\n")
    with pytest.raises(ValueError, match=r"row 2 \(.*img1.png\): the label is empty"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.json").write_text(json.dumps([{"path": "x.png", "label": None}]))
    with pytest.raises(ValueError, match=r"row 1 \(x.png\): the label is empty"):
        read_manifest(tmp_path / "m.json")
    rc, err = run_cli(args_for(world, tmp_path / "out", data=tmp_path / "m.csv"))
    assert rc == 2 and "row 2" in err and "None" not in err and not (tmp_path / "out").exists(), err


# ---------------------------------------------------------------------------- 11: nothing produced
@pytest.mark.slow
def test_a_run_that_produces_nothing_exits_non_zero_and_says_so(world, tmp_path):
    data = tmp_path / "data"
    for c in CLASSES:
        (data / c).mkdir(parents=True)
        (data / c / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rc, err = run_cli(args_for(world, tmp_path / "out", data=data))
    assert rc == 1 and "0 images written" in err and "nothing produced" in err, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "nothing produced" and summary["finished"] == 0 and len(summary["failed_inputs"]) == 2


# ---------------------------------------------------------------------------- one prompt rule
@pytest.mark.slow
def test_cub_folder_names_give_the_same_prompt_in_the_cli_and_the_node_rule(world, tmp_path):
    """The CLI's {class} and HiGFA Load Image Folder's {class_name} both come from class_name_from_label
    (tests/comfyui/test_jobs_prompt.py runs the node itself)."""
    from higfa.classifier import build_classifier, save_classifier

    data = tmp_path / "data"
    (data / "001.Black_footed_Albatross").mkdir(parents=True)
    cv2.imwrite(str(data / "001.Black_footed_Albatross" / "a.png"), make_image(np.random.default_rng(3)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        weights = save_classifier(build_classifier("test_resnet", ["Black footed Albatross"], 64),
                                  tmp_path / "albatross.safetensors")
    argv = args_for(world, tmp_path / "out", "--variants", "1", "--prompt", "a photo of a {class}", data=data)
    argv[argv.index("--classifier") + 1] = str(weights)
    rc, err = run_cli(argv)
    assert rc == 0, err
    assert [r["prompt"] for r in manifest(tmp_path / "out")] == ["a photo of a Black footed Albatross"]
    assert class_name_from_label("001.Black_footed_Albatross") == "Black footed Albatross"
