"""In-process ComfyUI fixtures (`comfy`: ComfyUI imported into this process, Route A: tiny ComfyUI
objects built in the tests). The server, `comfyui_path` and `world_path` fixtures are in
tests/conftest.py, shared with tests/browser.

Nothing here imports ComfyUI at collection time, so `pytest -m "not comfyui"` never needs it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_helpers import ROOT, TESTPACK  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The machine has 2 cores shared with other jobs: one torch thread avoids spin-wait contention
    that makes tiny-model ops 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- in-process ComfyUI
@pytest.fixture(scope="session")
def comfy(comfyui_path, tmp_path_factory):
    """ComfyUI's modules in this process (CPU), and this pack loaded the way ComfyUI loads it."""
    if str(comfyui_path) not in sys.path:
        sys.path.insert(0, str(comfyui_path))
    from comfy.cli_args import args

    args.cpu = True  # what --cpu does; must happen before comfy.model_management is imported
    import folder_paths

    tmp = tmp_path_factory.mktemp("comfy-inproc")
    for name, setter in (("temp", folder_paths.set_temp_directory), ("output", folder_paths.set_output_directory),
                         ("input", folder_paths.set_input_directory)):
        (tmp / name).mkdir()
        setter(str(tmp / name))
    spec = importlib.util.spec_from_file_location("higfa_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["higfa_pack"] = pack
    spec.loader.exec_module(pack)
    sys.path.insert(0, str(TESTPACK.parent))
    from testpack import tiny

    return SimpleNamespace(pack=pack, tiny=tiny, tmp=tmp)
