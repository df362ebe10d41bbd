"""Shared fixtures: the core tests' tiny world (no ComfyUI needed), the `higfa augment` tests' tiny models and
reference run (helpers in augment_support.py), and the real ComfyUI that
tests/comfyui and tests/browser share (one install, one server per session, started on first use).

Nothing here imports ComfyUI at collection time, so `pytest -m "not comfyui and not browser"` never
needs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "comfyui"))  # comfy_helpers, testpack
sys.path.insert(0, str(Path(__file__).resolve().parent))  # augment_support (--import-mode=importlib)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_world():
    from higfa.testing.stand_ins import TinyStack

    return TinyStack(seed=0, latent_size=8, num_classes=4)


class CountingClassifier(torch.nn.Module):
    """Wraps a classifier; counts forward calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, image):
        self.calls += 1
        return self.inner(image)


@pytest.fixture
def counting():
    return CountingClassifier


# ----------------------------------------------------------------------------- `higfa augment` on tiny models
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny SD + ControlNet folder, a 2-class classifier and a 2x2-image dataset (`augment_support`)."""
    from augment_support import make_world

    return make_world(tmp_path_factory.mktemp("augment"))


@pytest.fixture(scope="module")
def reference(world):
    """One uninterrupted single-process `higfa augment` run: what every other way of running must reproduce."""
    from augment_support import reference_run

    return reference_run(world)


# ----------------------------------------------------------------------------- a real ComfyUI
@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    from comfy_helpers import load_script

    return load_script("comfyui").install()  # a no-op once `make comfyui-setup` ran


@pytest.fixture(scope="session")
def world_path() -> Path:
    """The built-in world's folder (higfa/world/assets)."""
    from comfy_helpers import world_folder

    return world_folder()


@pytest.fixture(scope="session")
def server(comfyui_path, tmp_path_factory):
    """One ComfyUI server for the session, on a free port, with this repository and the test-only pack
    (tests/comfyui/testpack: tiny model loaders) linked into a temp --base-directory that also holds
    a tiny classifier, an input image and a small ImageFolder dataset."""
    from comfy_helpers import TESTPACK, Server, load_script, populate_base

    comfyui = load_script("comfyui")
    base = comfyui.prepare_base(tmp_path_factory.mktemp("comfy-base"), (TESTPACK,))
    populate_base(base)
    port = comfyui.free_port()
    log = base / "comfyui.log"
    proc = comfyui.start(base, port, log, env={"OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        comfyui.wait_ready(url, proc, log)
        yield Server(url, base, log)
    finally:
        comfyui.stop(proc)
