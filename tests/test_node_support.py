"""Core helpers the ComfyUI node pack relies on (no ComfyUI needed)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from higfa.contour import ContourTransform
from higfa.jobs.dataset import append_manifest, read_manifest
from higfa.schedule import Schedule
from higfa.sigmas import NoiseSchedule, percent_of_sigma


@pytest.mark.parametrize("percent", [0.0, 0.05, 0.3, 0.7, 0.999])
def test_percent_of_sigma_inverts_any_percent_to_sigma(percent):
    ns = NoiseSchedule.scaled_linear()
    sigma = ns.percent_to_sigma(percent) if percent > 0 else ns.sigma_max
    assert percent_of_sigma(ns.percent_to_sigma, sigma) == pytest.approx(ns.sigma_to_percent(sigma), abs=1e-9)
    flow = lambda p: 1.0 - p  # a flow model's σ = 1 − π (shift 1)  # noqa: E731
    assert percent_of_sigma(flow, 1.0 - percent) == pytest.approx(percent, abs=1e-9)


def test_percent_of_sigma_edges():
    ns = NoiseSchedule.scaled_linear()
    assert percent_of_sigma(ns.percent_to_sigma, 0.0) == 1.0
    assert percent_of_sigma(ns.percent_to_sigma, 1e6) == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(percent_of_sigma(ns.percent_to_sigma, 1e-4))


def test_contour_first_index_matches_one_big_batch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    batch = torch.from_numpy((rng.random((3, 32, 32, 3)) > 0.9).astype(np.float32))
    t = ContourTransform(amount=1.0)
    whole = t(batch, seed=5, variants=2)
    one = t(batch[2:3], seed=5, variants=2, first_index=2)
    assert torch.equal(whole[4:6], one)
    assert not torch.equal(whole[0:2], one)


def test_append_manifest_creates_extends_and_reads_back(tmp_path):
    path = tmp_path / "out" / "manifest.csv"
    append_manifest(path, [{"path": "a/1.png", "label": "a", "source": "a/x.png"}])
    append_manifest(path, [{"path": "b/2.png", "label": "b", "source": "b/y.png", "seed": 3}])
    items = read_manifest(path)
    assert [(i.id, i.label) for i in items] == [("a/1.png", "a"), ("b/2.png", "b")]
    assert items[0].path == path.parent / "a" / "1.png"
    header, first, second = path.read_text().splitlines()
    assert header == "path,label,source,seed" and first.endswith(",") and second.endswith(",3")
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_append_manifest_names_a_bad_row(tmp_path):
    with pytest.raises(ValueError, match="row 1 .* needs 'path' and 'label'"):
        append_manifest(tmp_path / "m.csv", [{"path": "x.png"}])


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(Schedule)] + ["x"]), JSON, max_size=6),
       confidence=st.floats(0, 1))
def test_schedule_from_any_json_is_a_clear_error_or_finite_curves(data, confidence):
    """What /higfa/schedule and saved workflows hand the core: a ValueError/TypeError naming the problem, or a
    schedule whose curves and to_dict are finite, strict JSON (a browser's JSON.parse takes them)."""
    try:
        schedule = Schedule.from_dict(data)
    except (ValueError, TypeError) as e:
        assert str(e)
        return
    curves = schedule.curves(np.linspace(0, 1, 11), confidence)
    assert all(np.isfinite(v).all() for v in curves.values())
    json.dumps(schedule.to_dict(), allow_nan=False)
