"""GET /higfa/schedule: the strengths a HiGFA Schedule gives over π, so front-end charts draw the
core's numbers instead of re-implementing them.

Query: preset, any schedule input (e.g. stage_boundary=0.6), points (default 101), confidence
(comma-separated, default 0,0.5,1). Answer: {"schedule", "progress", "curves": [{"confidence",
"cfg", "contour", "classifier_scale"}]}; a bad value gives HTTP 400 {"error": message}.
With only a preset, "schedule" is that preset's full parameter set: the schedule node's preset
dropdown fills its widgets from it (web/higfa_schedule.js), so presets live only in higfa.schedule.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..higfa.schedule import Schedule
from .schedule import FIELDS, build_schedule

_TYPES = {f.name: f.type for f in dataclasses.fields(Schedule)}


def _value(name: str, text: str):
    kind = _TYPES[name]
    if kind in ("bool", bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"schedule input '{name}' = {text!r}: use true or false")
        return text.lower() in ("true", "1")
    if kind in ("int", int):
        return int(text)
    if kind in ("float", float):
        return float(text)
    return text


def schedule_curves(query) -> dict:
    values = {k: _value(k, v) for k, v in query.items() if k in FIELDS}
    schedule = build_schedule(query.get("preset", "higfa"), **values)
    points = min(max(int(query.get("points", 101)), 2), 1001)
    progress = np.linspace(0.0, 1.0, points)
    confidences = [float(c) for c in str(query.get("confidence", "0,0.5,1")).split(",") if c.strip()]
    curves = [{"confidence": c, **{k: v.tolist() for k, v in schedule.curves(progress, c).items()}}
              for c in confidences]
    return {"schedule": schedule.to_dict(), "progress": progress.tolist(), "curves": curves}


def register() -> None:
    """Adds the route when a ComfyUI server is running (not when nodes are imported in tests)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return

    @server.routes.get("/higfa/schedule")
    async def get_schedule(request):
        try:
            return web.json_response(schedule_curves(request.rel_url.query))
        except (ValueError, TypeError) as e:
            return web.json_response({"error": str(e)}, status=400)
