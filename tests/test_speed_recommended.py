"""The recommended-configuration part (benchmarks/speed/recommended.py) on the tiny configs
(tests/data/speed_configs): its guidance kinds run the higfa-judged guide with a judge and TAESD, the gated kind
skips the backward, and the whole-run arithmetic. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.speed import recommended, sd15

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rec():
    before = sd15.CONFIGS
    yield recommended.Recommended(ROOT / "tests" / "data" / "speed_configs")
    sd15.CONFIGS = before


def test_kinds_run_the_judged_guide(rec):
    assert rec.schedule.views == 8 and rec.schedule.gating and rec.schedule.tau_skip == 0.8
    assert rec.judge is not rec.bench.m["classifier"]
    for kind in recommended.KINDS:  # guide_rec/gated_rec assert their backward and judge counts
        assert torch.isfinite(rec.run(kind)).all()


def test_ratios_arithmetic():
    med = {"plain": 1.0, "stage1": 1.0, "guide_rec": 0.5, "gated_rec": 0.2, "guide_tiny": 0.2}
    r = recommended.ratios(med, 20, 10)
    assert r["ratio"] == pytest.approx((20 + 10 * 1.5 + 0.2) / 30, abs=1e-3)
    assert r["ratio_all_gated"] == pytest.approx((20 + 10 * 1.2 + 0.2) / 30, abs=1e-3)
    assert r["ratio_higfa_taesd"] == pytest.approx((20 + 10 * 1.2) / 30, abs=1e-3)
    assert r["ratio_all_gated"] < r["ratio_probe_gated_share"] < r["ratio"]


def test_guidance_only_scales_the_reference_steps():
    med, extra = recommended.with_reference({"guide_rec": 3.0, "gated_rec": 1.0, "guide_tiny": 2.0},
                                            {"median_seconds": {"plain": 20.0, "stage1": 19.0, "guide_tiny": 1.0},
                                             "stage1_guide_overhead_seconds": 0.5})
    assert med["plain"] == 40.0 and med["stage1"] == 40.5 and extra["reference_scale"] == 2.0
    assert recommended.ratios(med, 20, 10)["ratio"] == pytest.approx((20 * 40.5 + 10 * 43.5 + 1) / 1200, abs=1e-3)
