import json

import numpy as np

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
    t = make_trace()
    again = Trace.from_json(t.to_json())
    assert again.to_dict() == t.to_dict()
    data = json.loads(t.to_json())
    assert data["summary"]["gated_sample_steps"] == 1 and data["summary"]["steps"] == 12
    assert data["steps"][-1]["confidence"] == [0.5 + 11 / 40]
    assert t.final_confidence() == [0.5 + 11 / 40]


def test_plot_is_an_image_and_a_png(tmp_path):
    img = make_trace().plot(tmp_path / "trace.png", size=(640, 360))
    assert img.shape == (360, 640, 3) and img.dtype == np.uint8 and img.std() > 10
    assert (tmp_path / "trace.png").read_bytes()[:4] == b"\x89PNG"
    empty = Trace().plot()
    assert empty.ndim == 3
