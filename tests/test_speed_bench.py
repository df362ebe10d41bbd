"""The speed benchmark's code on tiny configs (tests/data/speed_configs): every kind runs what it is named after,
the whole-run arithmetic, the memory probe and the report. The SD-1.5-size run itself is `make bench` only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.speed import sd15 as speed_sd15
from benchmarks.speed.report import report

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sd():
    before = speed_sd15.CONFIGS
    speed_sd15.CONFIGS = ROOT / "tests" / "data" / "speed_configs"
    models = speed_sd15.build(speed_sd15.parts_for(speed_sd15.KINDS), "cpu", torch.float32)
    yield speed_sd15, speed_sd15.Bench(models, "cpu", torch.float32)
    speed_sd15.CONFIGS = before


def test_step_counts_and_kinds(sd):
    mod, bench = sd
    assert (bench.n1, bench.n2) == (20, 10)  # 30 DDIM steps, π_c = 0.7 on SD's noise table
    assert bench.run("plain").shape == (1, 4, 8, 8)
    assert set(mod.KINDS) >= {"plain", "stage1", "guide_full", "guide_tiny", "gated_full", "gated_tiny"}
    for kind in mod.KINDS[1:]:  # (+ guide_full_ckpt where vae_decode has activation checkpointing)
        assert torch.isfinite(bench.run(kind)).all()  # guidance kinds assert their own backward count


def test_whole_run_arithmetic(sd):
    mod, _ = sd
    med = {"plain": 1.0, "stage1": 1.0, "guide_full": 2.0, "guide_tiny": 0.2, "gated_full": 1.0, "gated_tiny": 0.1}
    assert mod.whole_run(med, 20, 10, "full", 0.0) == pytest.approx((20 + 10 * 3 + 1) / 30)
    assert mod.whole_run(med, 20, 10, "tiny", 0.5) == pytest.approx((20 + 10 * 1.15 + 0.1) / 30)


def test_memory_probe_sees_the_backward(sd):
    mod, _ = sd
    out = mod.probe("guide_full", "cpu", torch.float32)
    assert out["peak_extra_mb"] > 0 and out["weights_mb"] > 0


def test_report_renders_every_section():
    sd15 = {"dtype": "fp32", "threads": 1, "rounds": 3, "steps": 30, "stage_boundary": 0.7, "stage1_steps": 20,
            "stage2_steps": 10, "per_plain_step": dict.fromkeys(("plain", "stage1", "guide_full", "guide_tiny",
                                                                  "gated_full", "gated_tiny"), 1.0),
            "median_seconds": dict.fromkeys(("plain", "stage1", "guide_full", "guide_tiny", "gated_full",
                                             "gated_tiny"), 1.0),
            "peak_memory_mb": {"plain": 300.0}, "ratio_full_vae": 1.8, "ratio_guidance_decoder": 1.05,
            "ratio_full_vae_half_gated": 1.6, "ratio_guidance_decoder_half_gated": 1.04,
            "ratio_full_vae_all_gated": 1.4, "stage1_ratio": 1.0, "stage1_ratio_per_round_median": 1.0}
    text = report({"machine": {}, "sd15": sd15})
    assert "| no stage-2 step gated | **1.800** | **1.050** |" in text and "Not run: no GPU" in text


def test_benchmarks_are_one_package():
    """Every bench module imports as `benchmarks.…` (what `python -m benchmarks.quality` / `.speed` run), none
    edits sys.path, and none imports another file's private (underscore) names."""
    import ast
    import importlib

    files = sorted((ROOT / "benchmarks").rglob("*.py"))
    assert {"benchmarks/quality/run.py", "benchmarks/speed/run.py", "benchmarks/seeds.py"} <= {
        str(f.relative_to(ROOT)) for f in files}
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        assert "sys.path" not in f.read_text(), f
        private = [a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and (node.level or (node.module or "").startswith("benchmarks")) for a in node.names
                   if a.name.startswith("_") and a.name != "__doc__"]
        assert not private, (f, private)
        module = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        importlib.import_module(module.removesuffix(".__init__"))
