"""The peer bench (benchmarks/speed/peer.py) on a tiny pipeline folder: each preset's arms run, the job and the
diffusers pipeline doing the same work give the same picture, and each preset's run keeps the other's result.
The SD-1.5-size run itself is `python -m benchmarks.speed.peer` only (no timing is asserted here)."""

from __future__ import annotations

import json

from benchmarks.speed import peer
from higfa.testing.pipeline_folder import save_tiny_pipeline


def test_peer_presets_write_their_keys_and_keep_the_other(tmp_path):
    folder = save_tiny_pipeline(tmp_path / "model", latent_size=8)
    out = tmp_path / "peer.json"
    # a result in the layout before the presets were split: its contour ratio is kept under "contour"
    out.write_text(json.dumps({"peer": {"sd15_contour_vs_diffusers": 0.98, "job_seconds": [1.0], "steps": 2}}))
    common = ["--folder", str(folder), "--work", str(tmp_path / "work"), "--out", str(out), "--steps", "2",
              "--rounds", "1"]
    assert peer.main(["--preset", "cfg", *common]) == 0
    r = json.loads(out.read_text())["peer"]
    assert r["sd15_contour_vs_diffusers"] == 0.98 and r["contour"]["job_seconds"] == [1.0]
    assert r["sd15_cfg_vs_diffusers"] > 0 and r["sd15_cfg_vs_diffusers_controlnet_pipeline"] > 0
    cfg = r["cfg"]
    assert cfg["preset"] == "cfg" and cfg["size"] == 64 and set(cfg["max_pixel_difference"]) == {
        "sd", "controlnet_scale0"}
    assert cfg["pipelines"]["sd"] == "StableDiffusionPipeline"
    # identical models, noise, prompt, CFG and DDIM steps: the job's PNG is the plain SD pipeline's picture
    assert cfg["max_pixel_difference"]["sd"] <= 2, cfg["max_pixel_difference"]
    assert peer.main(["--preset", "contour", *common]) == 0
    r = json.loads(out.read_text())["peer"]
    assert r["cfg"] == cfg and r["sd15_cfg_vs_diffusers"] > 0  # the cfg run is kept as it was
    assert r["contour"]["preset"] == "contour" and r["sd15_contour_vs_diffusers"] > 0
