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
