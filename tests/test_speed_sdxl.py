"""The SDXL speed part (benchmarks/speed/sdxl.py) at the tests' stand-in size: the models have SDXL's structure
(added text/time conditioning, a ControlNet sharing the UNet's encoder, the VAE's and taesdxl's latent scale),
every kind runs what it is named after through the project's own code (`sample_with_scheduler`, `Guide`), and a
whole run writes the keys speed.json and docs/speed.md need. No timing is asserted (`python -m
benchmarks.speed.sdxl` measures at 1024 px)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.speed import sdxl
from benchmarks.speed.report import report


@pytest.fixture(scope="module")
def model_phase():
    models = sdxl.build("model", sdxl.TINY)
    return models, sdxl.Bench(models, 64, sdxl.TINY)


def test_controlnet_shares_the_unet_encoder_and_owns_its_hint_layers(model_phase):
    models, _ = model_phase
    unet, cn = models["unet"], models["controlnet"]
    for name in sdxl.SHARED:
        assert getattr(cn, name) is getattr(unet, name)
    own = list(cn.controlnet_cond_embedding.parameters()) + list(cn.controlnet_down_blocks.parameters())
    assert own and all(p.device.type == "cpu" and torch.isfinite(p).all() for p in own)
    assert models["controlnet_shared_mb"] > 0
    # SDXL's added conditioning: pooled text + 6 size/crop ids of addition_time_embed_dim each
    assert unet.config.addition_embed_type == "text_time" and cn.config.addition_embed_type == "text_time"


def test_the_real_configs_are_sdxl_base():
    assert sdxl.UNET["transformer_layers_per_block"] == [1, 2, 10] and sdxl.UNET["cross_attention_dim"] == 2048
    assert sdxl.UNET["projection_class_embeddings_input_dim"] == sdxl.TEXT["pooled"] + 6 * 256
    assert sdxl.VAE["scaling_factor"] == 0.13025 and sdxl.CONTROLNET["cross_attention_dim"] == 2048


def test_model_kinds_run_one_stage1_step_of_the_sampling_loop(model_phase, monkeypatch):
    _, bench = model_phase
    assert (bench.n1, bench.n2) == (20, 10)  # 30 DDIM steps, π_c = 0.7 on SD/SDXL's noise table
    assert bench.emb["cond"].shape == (1, 77, 32) and bench.added["cond"]["time_ids"].shape == (1, 6)
    seen = []
    from higfa.backends import denoiser

    real = denoiser.unet_output

    def spy(unet, z, t, emb, controlnet=None, hint=None, strength=0.0, added=None):
        seen.append((z.shape[0], strength, hint is not None, sorted(added or {})))
        return real(unet, z, t, emb, controlnet, hint, strength, added)

    monkeypatch.setattr(denoiser, "unet_output", spy)
    for kind in ("plain", "stage1"):
        assert bench.run(kind).shape == (1, 4, 8, 8)
    # one model call per kind: cond + uncond through ControlNet (0.75 stage 1) and UNet with added conditioning
    assert seen == [(2, 0.75, True, ["text_embeds", "time_ids"])] * 2


def test_guidance_kinds_and_a_whole_tiny_run(tmp_path):
    out = tmp_path / "sdxl.json"  # every kind once, each in its phase's process (the guidance kinds assert their
    # own backward count)
    assert sdxl.main(["--configs", "tiny", "--size", "64", "--rounds", "1", "--stage1", "--full-vae-backward",
                      "--out", str(out)]) == 0
    s = json.loads(out.read_text())["sdxl"]
    assert s["size"] == 64 and s["rounds"] == 1 and s["full_vae_backward"] == "as is"
    assert s["stage1_guide_overhead_seconds"] > 0 and "stage1_from" not in s
    for key in ("ratio_full_vae", "ratio_guidance_decoder", "ratio_full_vae_wall", "ratio_guidance_decoder_wall"):
        assert s[key] > 0
    assert set(s["peak_memory_mb"]) == {"plain", "stage1", "guide_full", "guide_full_ckpt", "guide_tiny",
                                        "gated_full", "gated_tiny"}
    # the default run: the stage-1 step is the plain step's call + the Guide's stage-1 work timed alone
    phases = {"model": [{"runs": {"plain": [{"wall": 10.0, "cpu": 9.0, "peak_extra_mb": 1.0, "load": 1.0}]},
                         "stage1_steps": 20, "stage2_steps": 10, "controlnet_shared_mb": 1.0, "weights_mb": 1.0,
                         "build_seconds": 1.0, "peak_rss_mb": 1.0, "stage1_guide_overhead_seconds": None}],
              "guidance": [{"runs": {k: [{"wall": 1.0, "cpu": 1.0, "peak_extra_mb": 1.0, "load": 1.0}] for k in (
                  "guide_full_ckpt", "guide_tiny", "gated_full", "gated_tiny")}, "weights_mb": 1.0,
                  "build_seconds": 1.0, "peak_rss_mb": 1.0, "stage1_guide_overhead_seconds": 0.5}]}
    args = sdxl.argparse.Namespace(size=1024, threads=1)
    t = sdxl.summary(phases, args)
    assert t["stage1_from"] and t["full_vae_backward"] == "activation checkpointing"
    assert t["ratio_full_vae_wall"] == pytest.approx((20 * 10.5 + 10 * 11.5 + 1) / 300, abs=1e-3)
    assert t["ratio_guidance_decoder"] == pytest.approx((20 * 9.5 + 10 * 10.5 + 1) / 270, abs=1e-3)  # CPU time
    # a run split by hand: the kept phase results give the same section
    saved = sorted(tmp_path.glob("sdxl_*_*.json"))
    assert [f.name for f in saved] == ["sdxl_guidance_0.json", "sdxl_model_0.json"]
    again = tmp_path / "again.json"
    assert sdxl.main(["--summarise", *map(str, saved), "--out", str(again)]) == 0
    assert json.loads(again.read_text())["sdxl"]["ratio_full_vae"] == s["ratio_full_vae"]
    text = report({"machine": {}, "sdxl": s})
    assert "## SDXL size, CPU" in text and f"**{s['ratio_guidance_decoder']:.3f}**" in text


def test_full_vae_gated_part_from_the_guided_parts_own_forward():
    """Without a gated_full run, the full VAE's gated part is the guided part's decode + classifier forward
    (Guide.costs), in CPU seconds at that operation's CPU/wall."""
    def run(wall, cpu, **extra):
        return [{"wall": wall, "cpu": cpu, "peak_extra_mb": 1.0, "load": 1.0, **extra}]

    costs = {"seconds": {"decode_forward": 3.0, "classifier_forward": 1.0, "decode_backward": 6.0}}
    phases = {"model": [{"runs": {"plain": run(10.0, 10.0)}, "stage1_steps": 20, "stage2_steps": 10,
                         "controlnet_shared_mb": 1.0, "weights_mb": 1.0, "build_seconds": 1.0, "peak_rss_mb": 1.0,
                         "stage1_guide_overhead_seconds": None}],
              "guidance": [{"runs": {"guide_tiny": run(1.0, 1.0), "gated_tiny": run(0.5, 0.5),
                                     "guide_full_ckpt": run(20.0, 10.0, guide_costs=costs)}, "weights_mb": 1.0,
                            "build_seconds": 1.0, "peak_rss_mb": 1.0, "stage1_guide_overhead_seconds": 0.0}]}
    t = sdxl.summary(phases, sdxl.argparse.Namespace(size=1024, threads=1))
    assert t["gated_full_from"] and t["full_vae_backward"] == "activation checkpointing"
    assert t["ratio_full_vae"] == pytest.approx((20 * 10 + 10 * 20 + 2) / 300, abs=1e-3)  # gated: 4 s × 0.5
