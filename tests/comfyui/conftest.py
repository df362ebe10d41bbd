"""Fixtures that run a real ComfyUI (0.3.75 from scripts/comfyui.py, or COMFYUI_PATH).

`comfy`: ComfyUI imported into this process (Route A: tiny ComfyUI objects built in the tests).
`server`: one ComfyUI server for the session, on a free port, with this repository and the
test-only pack (tests/comfyui/testpack: tiny model loaders) linked into a temp --base-directory
that also holds a tiny classifier, an input image and a small ImageFolder dataset.

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
from comfy_helpers import ROOT, TESTPACK, Server, load_script, populate_base, world_folder  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The machine has 2 cores shared with other jobs: one torch thread avoids spin-wait contention
    that makes tiny-model ops 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    return load_script("comfyui").install()  # a no-op once `make comfyui-setup` ran


@pytest.fixture(scope="session")
def world_path(tmp_path_factory) -> Path:
    """The built-in world's folder, or a same-format stand-in while its models are not all there."""
    return world_folder(tmp_path_factory.mktemp("world"))


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


# ----------------------------------------------------------------------------- the server
@pytest.fixture(scope="session")
def server(comfyui_path, tmp_path_factory):
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
