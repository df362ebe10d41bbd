"""GET /higfa/schedule: the strengths a HiGFA Schedule gives over π, so front-end charts draw the
core's numbers instead of re-implementing them.

Query: preset, any schedule input (e.g. stage_boundary=0.6), points (default 101), confidence
(comma-separated, default 0,0.5,1). Answer: {"schedule", "progress", "curves": [{"confidence",
"cfg", "contour", "classifier_scale"}]}; a bad value gives HTTP 400 {"error": message}.
Bounded (at most MAX_POINTS points and MAX_CONFIDENCES confidences, every number finite) and computed
off the event loop, so no query can stall the server or answer JSON a browser cannot parse.
With only a preset, "schedule" is that preset's full parameter set: the schedule node's preset
dropdown fills its widgets from it (web/higfa_schedule.js), so presets live only in higfa.schedule.
"""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np

from ..higfa.schedule import Schedule
from .schedule import FIELDS, build_schedule

MAX_POINTS = 1001
MAX_CONFIDENCES = 16


def _finite(name: str, text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"'{name}' = {text!r}: must be a finite number")
    return value


def schedule_curves(query) -> dict:
    """The answer for one query (a mapping of strings); ValueError naming the bad value otherwise."""
    values = {k: Schedule.parse_field(k, v) for k, v in query.items() if k in FIELDS}
    schedule = build_schedule(query.get("preset", "higfa"), **values)
    text = str(query.get("points", 101)).strip()
    points = int(text) if text.lstrip("-").isdigit() and len(text) < 8 else None
    if points is None or not 2 <= points <= MAX_POINTS:
        raise ValueError(f"points = {text!r}: use a whole number from 2 to {MAX_POINTS}")
    confidences = [c for c in str(query.get("confidence", "0,0.5,1")).split(",") if c.strip()]
    if len(confidences) > MAX_CONFIDENCES:
        raise ValueError(f"confidence: {len(confidences)} values given, at most {MAX_CONFIDENCES}")
    confidences = [_finite("confidence", c) for c in confidences]
    progress = np.linspace(0.0, 1.0, points)
    curves = [{"confidence": c, **{k: v.tolist() for k, v in schedule.curves(progress, c).items()}}
              for c in confidences]
    return {"schedule": schedule.to_dict(), "progress": progress.tolist(), "curves": curves}


def answer(query) -> tuple[int, str]:
    """(HTTP status, JSON text): 200 with the curves, or 400 with {"error": message}. Never NaN/Infinity."""
    try:
        return 200, json.dumps(schedule_curves(query), allow_nan=False)
    except (ValueError, TypeError, OverflowError, ArithmeticError) as e:  # json's NaN refusal is a ValueError
        return 400, json.dumps({"error": str(e) or type(e).__name__})


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
        # Off the event loop: a slow answer never delays the server's other requests.
        status, body = await asyncio.get_running_loop().run_in_executor(None, answer, dict(request.rel_url.query))
        return web.Response(text=body, status=status, content_type="application/json")
