"""Browser tests: the ComfyUI front end in headless Chromium against the real ComfyUI server that
tests/conftest.py starts once per session (this pack and the tiny-model test pack linked into a temp
base directory), the same server tests/comfyui posts to.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
COMFYUI_TESTS = HERE.parent / "comfyui"
sys.path.insert(0, str(COMFYUI_TESTS))
sys.path.insert(0, str(HERE))


@pytest.fixture(scope="module")
def chromium(server):
    """Headless Chromium with the ComfyUI app booted, one per test module (comfy_page.ChromiumApp)."""
    from comfy_page import CHROMIUM, ChromiumApp

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/browser_setup.sh (make test does)")
    app = ChromiumApp(server.url, [], [])
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def ui(chromium, server):
    """The module's page for one test. `ui.console` collects the page's console errors/warnings, uncaught
    exceptions and renderer crashes, `ui.served` (status, url) of responses. A page that stopped drawing
    frames (or crashed) in an earlier test is replaced first, so a stalled browser fails one test only."""
    from comfy_page import draws_frames

    if not draws_frames(chromium.page):
        chromium.relaunch()
    return SimpleNamespace(page=chromium.page, console=chromium.console, served=chromium.served, server=server)
