"""What a hostile or careless API client tries on a shared server: folders outside ComfyUI's own,
labels that are paths, a schedule query that would stall the server, huge images. Each test reproduces the
probe against a real ComfyUI and checks the clear error or the safe result, and that nothing outside the
allowed folders was read into a result or written."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfy_helpers import make_image

pytestmark = pytest.mark.comfyui


def _error(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "error", json.dumps(entry["status"])[-2000:]
    return next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _load_and_save(server, folder: str, out: str) -> dict:
    """Load Image Folder (all) -> Save Image Folder (<output>/<out>/<class>/...)."""
    return server.run({
        "1": {"class_type": "HiGFA_LoadImageFolder", "inputs": {"folder": folder, "mode": "all", "index": 0,
                                                                  "limit": 0, "prompt_template": "{class_name}"}},
        "2": {"class_type": "HiGFA_SaveImageFolder", "inputs": {"images": ["1", 0], "class_name": ["1", 1],
                                                                  "folder": out, "source": ["1", 3]}}})


# ----------------------------------------------------------------------------- 1: reading folders
def test_load_image_folder_reads_only_inside_the_input_folder(server, tmp_path):
    from higfa.jobs.dataset import save_image

    secret = tmp_path / "host"  # a folder on the host, outside ComfyUI's folders
    save_image(secret / "private" / "secret.png", make_image(1))
    inp = server.base / "input" / "probe_links"
    save_image(inp / "birds" / "ok.png", make_image(2))
    (inp / "birds" / "leak.png").symlink_to(secret / "private" / "secret.png")  # a file link leaving input/
    (inp / "private").symlink_to(secret / "private", target_is_directory=True)  # a class folder link
    outputs = server.base / "output"
    before = _files(outputs)
    rel_escape = os.path.relpath(secret, server.base / "input")
    for folder in (str(secret), rel_escape, "/", "../../"):
        error = _error(_load_and_save(server, folder, "probe_escape"))
        assert error["node_type"] == "HiGFA_LoadImageFolder"
        assert "is outside" in error["exception_message"] and "HIGFA_ALLOWED_ROOTS" in error["exception_message"]
    assert _files(outputs) == before  # nothing from the host was saved

    entry = _load_and_save(server, "probe_links", "probe_links_out")
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    assert _files(outputs / "probe_links_out") == {"birds/ok_00000.png", "manifest.csv"}
    assert "secret" not in (outputs / "probe_links_out" / "manifest.csv").read_text()


def test_world_loader_path_stays_in_the_models_folder(server, tmp_path):
    outside = tmp_path / "world"
    (outside / "unet").mkdir(parents=True)
    for path in (str(outside), "../../", "/"):
        entry = server.run({"1": {"class_type": "HiGFA_WorldLoader", "inputs": {"path": path}},
                            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 5]}}})
        error = _error(entry)
        assert error["node_type"] == "HiGFA_WorldLoader"
        assert "outside" in error["exception_message"] and "models" in error["exception_message"]


def test_a_folder_with_a_nul_character_is_a_clear_error(comfy):
    """Issue 27: 'data\\x00set' gave the OS's raw "embedded null byte"; now the input is named (nodes/_paths.confine,
    which every widget path of the pack goes through)."""
    nodes = comfy.pack.nodes
    for call in (lambda: nodes.dataset.HiGFALoadImageFolder.execute("data\x00set", "all", 0, 0, "{class}"),
                 lambda: nodes.dataset.HiGFALoadImageFolder.fingerprint_inputs("data\x00set")):
        with pytest.raises(ValueError, match=r"folder 'data\\x00set' contains a NUL character") as e:
            call()
        assert "embedded null byte" not in str(e.value)


def test_world_loader_guidance_vae_decodes_for_a_world_without_a_tiny_decoder(comfy, world_path, tmp_path,
                                                                             monkeypatch):
    """Issue 27: the guidance_vae output was None for such a world, and a stock VAE Decode then failed with an
    AttributeError. Now it is the world's VAE (what the guider uses when the input is left empty)."""
    import shutil

    import torch

    W = comfy.pack.nodes.world
    bare = tmp_path / "bare"
    shutil.copytree(world_path, bare, ignore=shutil.ignore_patterns("tiny_decoder", "checkpoints"))
    monkeypatch.setenv("HIGFA_ALLOWED_ROOTS", str(tmp_path))
    with torch.inference_mode():
        out = W.HiGFAWorldLoader.execute(str(bare)).args
        vae, guidance_vae = out[1], out[6]
        assert guidance_vae is vae
        latent = torch.zeros(1, vae.latent_channels, 8, 8)
        image = guidance_vae.decode(latent)  # what the stock VAE Decode node calls
    assert image.shape[-1] == 3 and torch.isfinite(image).all()


def test_allowed_roots_is_a_server_side_opt_in(comfy, tmp_path, monkeypatch):
    """HIGFA_ALLOWED_ROOTS (the server's environment) lets an absolute folder in; links out of it still
    don't, and a /interrupt stops the scan."""
    import comfy.model_management as mm

    from higfa.jobs.dataset import save_image

    nodes = comfy.pack.nodes.dataset
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    save_image(allowed / "a" / "1.png", make_image(3))
    save_image(other / "b" / "2.png", make_image(4))
    (allowed / "b").symlink_to(other / "b", target_is_directory=True)
    with pytest.raises(ValueError, match="HIGFA_ALLOWED_ROOTS"):
        nodes.HiGFALoadImageFolder.execute(str(allowed), "all", 0, 0, "{class_name}")
    monkeypatch.setenv("HIGFA_ALLOWED_ROOTS", os.pathsep.join([str(tmp_path / "none"), str(allowed)]))
    out = nodes.HiGFALoadImageFolder.execute(str(allowed), "all", 0, 0, "{class_name}").args
    assert out[1] == ["a"] and out[3] == ["a/1.png"]
    with pytest.raises(ValueError, match="is outside"):
        nodes.HiGFALoadImageFolder.execute(str(other), "all", 0, 0, "{class_name}")
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            nodes.HiGFALoadImageFolder.execute(str(allowed), "all", 0, 0, "{class_name}")
    finally:
        mm.interrupt_current_processing(False)


# ----------------------------------------------------------------------------- 2: /higfa/schedule
def _get(server, query: str, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"{server.url}/higfa/schedule?{query}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _check_answer(status: int, body: bytes) -> dict:
    """400 with a message, or 200 with strict JSON (no NaN/Infinity) of bounded size."""
    data = json.loads(body, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in the answer"))
    assert status in (200, 400), (status, body[:300])
    if status == 400:
        assert isinstance(data["error"], str) and data["error"]
    else:
        assert len(body) < 2_000_000 and len(data["progress"]) <= 1001 and len(data["curves"]) <= 16
    return data


def test_schedule_route_refuses_the_stalling_and_non_finite_probes(server):
    many = ",".join(["0"] * 4000)  # the probe: 4000 confidences (just under aiohttp's 8 KB request line)
    start = time.monotonic()
    status, body = _get(server, f"confidence={many}&points=1001")
    assert status == 400 and "at most 16" in _check_answer(status, body)["error"]
    assert time.monotonic() - start < 5
    for query in ("confidence=nan", "confidence=inf", "confidence=0.5,-inf", "stage_boundary=nan",
                  "points=100000", "points=1e3"):
        status, body = _get(server, query)
        assert status == 400, (query, body[:200])
        _check_answer(status, body)


KEYS = st.sampled_from(["preset", "points", "confidence", "stage_boundary", "tau_lo", "tau_hi", "cfg", "measure_every",
                        "contour_strength", "classifier_scale", "modulate", "grad_norm", "batch_confidence", "x", ""])
VALUES = st.one_of(st.text(max_size=30), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.integers(-10**6, 10**6).map(str), st.sampled_from(["cfg", "higfa", "custom", "true", "nan"]),
                   st.lists(st.floats(-2, 2), max_size=20).map(lambda v: ",".join(map(str, v))))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(query=st.dictionaries(KEYS, VALUES, max_size=6))
def test_schedule_route_answers_any_query_with_400_or_bounded_json(server, query):
    status, body = _get(server, urllib.parse.urlencode(query))
    _check_answer(status, body)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.text(max_size=200))
def test_schedule_route_answers_any_raw_query_string(server, raw):
    status, body = _get(server, urllib.parse.quote(raw, safe="=&,"))
    _check_answer(status, body)


def test_server_answers_others_while_the_largest_schedules_are_computed(server):
    heavy = "preset=higfa&points=1001&confidence=" + ",".join(str(i / 15) for i in range(16))
    done = threading.Event()

    def hammer():
        while not done.is_set():
            status, body = _get(server, heavy)
            assert status == 200

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        for _ in range(5):
            start = time.monotonic()
            server.get("/system_stats")
            assert time.monotonic() - start < 1.0
    finally:
        done.set()
        for t in threads:
            t.join(timeout=30)


# ----------------------------------------------------------------------------- 3 and 8: Save Image Folder
def test_save_image_folder_refuses_path_labels_and_honours_the_umask(server, tmp_path):
    outputs = server.base / "output"
    (outputs / "probe_labels").mkdir()
    (outputs / "probe_labels" / "linked").symlink_to(tmp_path, target_is_directory=True)  # a class folder leading out
    before = _files(outputs)
    image = {"class_type": "HiGFA_WorldImage", "inputs": {"species": "0", "index": 0, "split": "fewshot"}}
    for label in ("../../../escaped_label", "..", "a/b", "a\\b", " ", "linked"):
        entry = server.run({"1": image, "2": {"class_type": "HiGFA_SaveImageFolder", "inputs": {
            "images": ["1", 0], "class_name": label, "folder": "probe_labels", "source": ""}}})
        assert "class_name" in _error(entry)["exception_message"]
    assert _files(outputs) == before and not list(server.base.parent.rglob("escaped_label"))
    assert not any(tmp_path.iterdir())
    (outputs / "probe_labels" / "linked").unlink()

    entry = server.run({"1": image, "2": {"class_type": "HiGFA_SaveImageFolder", "inputs": {
        "images": ["1", 0], "class_name": "001.Black_footed_Albatross", "folder": "probe_labels", "source": ""}}})
    assert entry["status"]["status_str"] == "success"
    mask = os.umask(0)
    os.umask(mask)  # the server inherited this process's umask
    written = [outputs / "probe_labels" / "manifest.csv", *(outputs / "probe_labels").rglob("*.png")]
    assert len(written) == 2 and {p.stat().st_mode & 0o777 for p in written} == {0o666 & ~mask}


# ----------------------------------------------------------------------------- 12: huge images
def test_huge_images_are_refused_with_their_size(server, comfy):
    import torch

    from higfa.jobs.dataset import save_image

    big = torch.zeros(1, 1, 1, 3).expand(1, 6000, 6000, 3)  # no memory: refused before any work
    with pytest.raises(ValueError, match="6000x6000 px"):
        comfy.pack.nodes.contour.HiGFAContourTransform.execute(big, "canny", 120, 200, 0, False, 0.5, 0, 4)
    fits = torch.zeros(1, 1, 1, 3).expand(1, 2048, 2048, 3)
    with pytest.raises(ValueError, match="2048x2048 px x 64 outputs"):
        comfy.pack.nodes.contour.HiGFAContourTransform.execute(fits, "canny", 120, 200, 0, False, 0.5, 0, 64)
    import numpy as np

    save_image(server.base / "input" / "probe_big" / "wide" / "big.png", np.zeros((8, 4100, 3), np.uint8))
    error = _error(_load_and_save(server, "probe_big", "probe_big_out"))
    assert "image wide/big.png is 4100x8 px" in error["exception_message"]
