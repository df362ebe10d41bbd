"""HiGFA Schedule an artist can read (issue 27, item 10): the preset, stage boundary, cfg, contour strength and
classifier scale in front; every other input marked `advanced` (newer front ends fold them away) where the running
ComfyUI has the flag, and no such key where it has not (0.3.75); the widget order of saved workflows unchanged.

Runs against whichever ComfyUI the session's server is (COMFYUI_PATH, default 0.3.75)."""

from __future__ import annotations

import json

import pytest

from comfy_helpers import SHIPPED, WORKFLOWS

pytestmark = pytest.mark.comfyui
FRONT = ["preset", "stage_boundary", "cfg", "contour_strength", "classifier_scale"]


def options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def has_advanced_inputs(comfyui_path) -> bool:
    """Whether this ComfyUI's V3 inputs take `advanced=` (0.3.75's do not; its classic CLIPLoader sends an
    "advanced" option its front end 1.32.9 does not fold, so /object_info alone cannot tell)."""
    source = (comfyui_path / "comfy_api" / "latest" / "_io.py").read_text()
    return "advanced: bool" in source


def test_schedule_inputs_in_front_and_advanced(server, comfyui_path):
    from higfa.schedule import Schedule

    info = server.object_info
    inputs = info["HiGFA_Schedule"]["input"]["required"]
    # The widget order saved workflows rely on: the preset, then Schedule's fields in declaration order.
    assert list(inputs) == ["preset", *[k for k in Schedule().to_dict() if k != "preset"]]
    marked = [k for k, spec in inputs.items() if "advanced" in options(spec)]
    if has_advanced_inputs(comfyui_path):
        assert marked == [k for k in inputs if k not in FRONT]
        assert all(options(inputs[k])["advanced"] is True for k in marked)
    else:
        assert marked == [], "this ComfyUI has no advanced inputs: send no key its front end does not know"


def test_shipped_workflows_keep_their_schedule_widget_values(server):
    """Every shipped Schedule's widgets_values still line up with the node's inputs: one value per widget,
    and the preset first (a reordered input list would shift them)."""
    inputs = server.object_info["HiGFA_Schedule"]["input"]["required"]
    for name in SHIPPED:
        for node in json.loads((WORKFLOWS / f"{name}.json").read_text())["nodes"]:
            if node["type"] == "HiGFA_Schedule":
                values = node["widgets_values"]
                assert len(values) == len(inputs), name
                assert values[0] in options(inputs["preset"]).get("options", inputs["preset"][0]), name
                assert isinstance(values[list(inputs).index("views")], int), name
