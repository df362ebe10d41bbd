import dataclasses
import json

import numpy as np
import pytest

from higfa.schedule import Schedule
from higfa.trace import Trace, TraceStep


def make_trace():
    t = Trace(schedule=Schedule().to_dict(), target=[3], class_names=["a", "b", "c", "d"])
    for i, pi in enumerate(np.linspace(0.05, 0.98, 12)):
        st = 2 if pi >= 0.7 else 1
        t.add(TraceStep(index=i, progress=float(pi), sigma=float(10 * (1 - pi)), stage=st,
                        cfg=7.5 if st == 1 else 5.0, contour=0.75 if st == 1 else 0.4,
                        classifier_scale=[0.0] if st == 1 else [0.6], confidence=None if st == 1 else [0.5 + i / 40],
                        grad_norm=None if st == 1 else [1e-3], gated=[st == 2 and i > 10], nan_skipped=[False],
                        seconds=0.01))
    return t


def test_json_round_trip_and_summary():
    """Every field survives JSON, and the summary counts what the steps say: 12 evaluations of which the 4 at
    π >= 0.7 are stage 2 and guided (w_cls > 0), the last one gated; the final confidence is the last step's."""
    t = make_trace()
    again = Trace.from_json(t.to_json())
    assert again.to_dict() == t.to_dict() and again.steps[-1] == t.steps[-1]
    data = json.loads(t.to_json())
    summary = data["summary"]
    assert {k: summary[k] for k in ("steps", "evaluations", "stage2_evaluations", "guided_sample_steps",
                                    "gated_sample_steps", "nan_skipped")} == {
        "steps": 12, "evaluations": 12, "stage2_evaluations": 4, "guided_sample_steps": 4, "gated_sample_steps": 1,
        "nan_skipped": 0}
    assert summary["seconds"] == pytest.approx(0.12) and summary["final_confidence"] == [0.5 + 11 / 40]
    assert data["target"] == [3] and data["class_names"] == ["a", "b", "c", "d"]
    assert data["schedule"] == Schedule().to_dict()
    assert [s["stage"] for s in data["steps"]] == [1] * 8 + [2] * 4
    assert data["steps"][-1]["confidence"] == [0.5 + 11 / 40] and data["steps"][0]["confidence"] is None
    assert t.final_confidence() == [0.5 + 11 / 40]


def test_plot_is_an_image_and_a_png(tmp_path):
    img = make_trace().plot(tmp_path / "trace.png", size=(640, 360))
    assert img.shape == (360, 640, 3) and img.dtype == np.uint8 and img.std() > 10
    assert (tmp_path / "trace.png").read_bytes()[:4] == b"\x89PNG"
    empty = Trace().plot()  # no steps: still an image (a node's preview must never fail), just axes
    assert empty.ndim == 3 and empty.shape[2] == 3 and empty.dtype == np.uint8 and empty.std() > 0


def test_energy_inside_a_synthetic_mask():
    from higfa.trace import energy_inside, grad_map

    m = np.zeros((16, 16))
    m[:, :8] = 1.0  # all the energy in the left half
    left = np.zeros((64, 64), bool)
    left[:, :32] = True  # the mask at image resolution (4× the map)
    assert energy_inside(m, left)[0] == 1.0 and energy_inside(m, ~left)[0] == 0.0
    uniform = np.ones((2, 16, 16))
    square = np.zeros((64, 64), bool)
    square[16:48, 16:48] = True  # a quarter of the image
    np.testing.assert_allclose(energy_inside(uniform, square), [0.25, 0.25])
    # energy is |g|²: a cell with twice the |g| carries four times the energy
    two = np.ones((1, 2, 2))
    two[0, 0, 0] = 2.0
    corner = np.zeros((8, 8))
    corner[:4, :4] = 1
    np.testing.assert_allclose(energy_inside(two, corner), [4 / 7])
    # a half-covered cell counts half
    np.testing.assert_allclose(energy_inside(np.ones((2, 2)), np.pad(np.ones((8, 2)), ((0, 0), (0, 6)))), [0.25])
    # saved maps: g² summed over channels, pooled, square-rooted, max 1; their energy fractions survive pooling
    e = np.zeros((1, 32, 32), np.float32)
    e[0, 4:12, 4:12] = 9.0
    e[0, 20:28, 20:28] = 1.0
    saved = np.asarray(grad_map(e))
    assert saved.shape == (1, 16, 16) and saved.max() == 1.0
    first = np.zeros((32, 32))
    first[:16, :16] = 1
    np.testing.assert_allclose(energy_inside(saved, first), [0.9], atol=1e-3)
    with pytest.raises(ValueError, match="2 maps but 3 masks"):
        energy_inside(uniform, np.ones((3, 4, 4)))


def test_trace_energy_inside_per_step():
    t = make_trace()
    t.steps[-1].grad_map = [np.eye(4).tolist()]
    mask = np.eye(4, dtype=bool)
    assert t.energy_inside(mask) == [1.0]
    assert Trace.from_json(t.to_json()).steps[-1].grad_map == [np.eye(4).tolist()]


def test_non_finite_values_are_written_as_null_and_read_back():
    """Zero terminal SNR puts σ = ∞ in the first row: the JSON must still be strict (no `Infinity`/`NaN`, which
    strict parsers refuse), σ comes back as ∞, and every other non-finite float is null too."""
    t = make_trace()
    t.steps[0].sigma = float("inf")
    t.steps[-1].grad_norm = [float("nan")]

    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    text = t.to_json(indent=1)
    assert "Infinity" not in text and "NaN" not in text
    data = json.loads(text, parse_constant=refuse)
    assert data["steps"][0]["sigma"] is None and data["steps"][-1]["grad_norm"] == [None]
    assert data["steps"][1]["sigma"] == t.steps[1].sigma  # finite values untouched
    again = Trace.from_json(text)
    assert again.steps[0].sigma == float("inf") and again.steps[1:-1] == t.steps[1:-1]


def test_a_finite_trace_writes_the_same_bytes_as_plain_json():
    """The null rule changes nothing for a trace without non-finite values (saved traces keep their bytes)."""
    t = make_trace()
    plain = {"schedule": t.schedule, "target": t.target, "class_names": t.class_names,
             "guidance_decoder": t.guidance_decoder, "summary": t.summary(),
             "steps": [{k: v for k, v in dataclasses.asdict(s).items()
                        if not (k in ("grad_map", "judge_confidence") and v is None)} for s in t.steps]}
    assert t.to_json(indent=1) == json.dumps(plain, indent=1)
