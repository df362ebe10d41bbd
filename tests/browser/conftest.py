"""Browser tests: the ComfyUI front end in headless Chromium against the real ComfyUI server of
tests/comfyui (its `server` fixture, reused as is: this pack and the tiny-model test pack linked
into a temp base directory). The pytest run gets its own instance of that session fixture here, so
a full run starts a second, idle-after-use ComfyUI for these tests.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
COMFYUI_TESTS = HERE.parent / "comfyui"
sys.path.insert(0, str(COMFYUI_TESTS))
sys.path.insert(0, str(HERE))


def _comfyui_fixtures():
    spec = importlib.util.spec_from_file_location("higfa_comfyui_test_fixtures", COMFYUI_TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fixtures = _comfyui_fixtures()
comfyui_path = _fixtures.comfyui_path
server = _fixtures.server


@pytest.fixture(scope="module")
def ui(server):
    """One Chromium page with the ComfyUI app booted, for a test module. `ui.console` collects the
    page's console errors/warnings and uncaught exceptions, `ui.served` (status, url) of responses."""
    from comfy_page import CHROMIUM, chromium_page

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/browser_setup.sh (make test does)")
    console: list[str] = []
    served: list[tuple[int, str]] = []
    with chromium_page(server.url, console, served) as page:
        yield SimpleNamespace(page=page, console=console, served=served, server=server)
