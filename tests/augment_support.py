"""What the `higfa augment` tests share (test_augment, test_augment_guidance_vae, test_augment_safety): a tiny
SD + ControlNet folder with a 2-class classifier and dataset, the CLI in-process and as a child process, and
comparisons of output folders. The fixtures built from these (`world`, `reference`) are in conftest.py."""

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from higfa.jobs import cli

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("001.Red_Cardinal", "002.House_Sparrow")
N_ITEMS = 8  # 2 classes x 2 images x 2 variants


# ---------------------------------------------------------------------------- fixtures
def make_image(rng, h=80, w=96):
    img = np.full((h, w, 3), int(rng.integers(0, 60)), np.uint8)
    color = tuple(int(x) for x in rng.integers(80, 255, 3))
    cv2.circle(img, (int(rng.integers(30, 60)), int(rng.integers(30, 50))), int(rng.integers(10, 25)), color, -1)
    cv2.rectangle(img, (5, 5), (int(rng.integers(20, 40)), int(rng.integers(20, 40))), (255, 255, 255), 2)
    return img


def write_dataset(root: Path, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            cv2.imwrite(str(root / c / f"img{i}.{'png' if i else 'jpg'}"), make_image(rng))
    return root


def make_world(base: Path) -> dict:
    """A tiny SD + ControlNet folder, a 2-class classifier and a 2x2-image dataset under `base`."""
    from higfa.classifier import build_classifier, save_classifier
    from higfa.testing.pipeline_folder import save_tiny_pipeline

    model = save_tiny_pipeline(base / "model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clf = build_classifier("test_resnet", ["Red Cardinal", "House Sparrow"], 64, mean=(0.5,) * 3, std=(0.5,) * 3)
    weights = save_classifier(clf, base / "birds.safetensors")
    data = write_dataset(base / "data")
    return {"base": base, "model": model, "classifier": weights, "data": data}


def args_for(world, out, *extra, data=None):
    return ["augment", "--data", str(data or world["data"]), "--out", str(out), "--model", str(world["model"]),
            "--classifier", str(world["classifier"]), "--steps", "3", "--variants", "2", "--super", "bird",
            "--traces", "--threads", "1", "--no-progress", *extra]


def run_cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main([str(a) for a in argv])
    return rc, err.getvalue()


def subprocess_env(**extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def snapshot(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def images(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def without_timing(obj):
    """Records and traces minus wall-clock fields (the only thing that differs between runs)."""
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def assert_same_outputs(a: Path, b: Path, traces=True):
    """Same file set, byte-identical images, records and traces equal up to timing."""
    fa, fb = snapshot(a), snapshot(b)
    assert sorted(k for k in fa if not k.startswith("parts/")) == sorted(k for k in fb if not k.startswith("parts/"))
    assert images(a) == images(b)
    assert without_timing(manifest(a)) == without_timing(manifest(b))
    if traces:
        for t in sorted((a / "traces").rglob("*.json")):
            rel = t.relative_to(a)
            assert without_timing(json.loads(t.read_text())) == without_timing(json.loads((b / rel).read_text()))


def default_signals():
    """In the child before exec: SIGINT/SIGTERM back to their defaults, so Python installs its Ctrl-C
    handler even when this test process was started with SIGINT ignored (`bash -c '...' &`, nohup)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_augment(world, out, *extra):
    """`higfa augment` in a child process with the default signal handlers (SIGINT ignored here meanwhile,
    to prove the child does not depend on how this process was started)."""
    cmd = [sys.executable, "-m", "higfa.jobs.cli", *args_for(world, out, *extra)]
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=default_signals)
    finally:
        signal.signal(signal.SIGINT, before)


def record_count(out: Path) -> int:
    return sum(line.endswith("\n") for p in (out / "parts").glob("*.jsonl") for line in
               p.read_text().splitlines(keepends=True))


def wait_for_records(proc, out: Path, n: int, timeout: float = 900.0) -> None:
    """Poll until the child has appended n records (it must still be running)."""
    deadline = time.monotonic() + timeout
    while record_count(out) < n:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {n} records: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {n} records after {timeout} s")
        time.sleep(0.01)


def interrupt(proc, out: Path, n: int, sig: int) -> tuple[int, str, float]:
    """Send `sig` once n records exist: (exit code, stderr, seconds from the signal to the exit)."""
    wait_for_records(proc, out, n)
    t0 = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, time.monotonic() - t0


def finished_records(out: Path) -> dict[str, dict]:
    recs = [json.loads(line) for p in (out / "parts").glob("*.jsonl") for line in p.read_text().splitlines()]
    return {r["key"]: r for r in recs if r["status"] == "ok" and (out / r["output"]).is_file()}


def reference_run(world: dict) -> tuple[Path, str]:
    """One uninterrupted single-process `higfa augment` run into world["base"]/reference: (folder, stderr)."""
    out = world["base"] / "reference"
    rc, err = run_cli(args_for(world, out))
    assert rc == 0, err
    return out, err
