"""GET /higfa/schedule: the strengths a HiGFA Schedule gives over π, so front-end charts draw the
core's numbers instead of re-implementing them.

Query: preset, any schedule input (e.g. stage_boundary=0.6), points (default 101), confidence
(comma-separated, default 0,0.5,1). Answer: {"schedule", "progress", "curves": [{"confidence",
"cfg", "contour", "classifier_scale"}]}; a bad value gives HTTP 400 {"error": message}.
Bounded (at most MAX_POINTS points and MAX_CONFIDENCES confidences, every number finite) and computed
off the event loop, one answer at a time, so no query can stall the server or answer JSON a browser cannot
parse, and a flood of requests cannot slow its other routes: identical requests in flight share one
computation, recent answers are cached (`answer_shared`), and clients that accept gzip get it packed once.
With only a preset, "schedule" is that preset's full parameter set: the schedule node's preset
dropdown fills its widgets from it (web/higfa_schedule.js), so presets live only in higfa.schedule.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..higfa.schedule import Schedule
from .schedule import FIELDS, build_schedule

MAX_POINTS = 1001
MAX_CONFIDENCES = 16
# One computation at a time, on a thread of its own: the answer is GIL-bound Python, so more threads would only
# take the GIL from the event loop (400 concurrent requests on the shared default executor slowed /system_stats
# to 2.9 s); the rest wait here without costing the loop anything.
_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="higfa-schedule")
CACHE_SIZE = 64
CACHE_BODY_LIMIT = 512 * 1024  # a 1001-point, 16-confidence answer is ~375 KB: at most ~32 MB cached
_cache: OrderedDict[tuple, tuple[int, bytes, bytes]] = OrderedDict()
_in_flight: dict[tuple, asyncio.Future] = {}


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


def _answer_bytes(query: dict) -> tuple[int, bytes, bytes]:
    """(status, UTF-8 body, the body gzipped): encoded and packed once on the worker, not once per response on
    the event loop. The curves are piecewise constant: the largest answer packs from 375 KB to 4 KB."""
    status, body = answer(query)
    raw = body.encode()
    return status, raw, gzip.compress(raw, 5)


async def answer_shared(query: dict) -> tuple[int, bytes, bytes]:
    """`_answer_bytes` computed on the route's one worker thread; a request identical to one in flight awaits
    that one's result, and the last CACHE_SIZE answers (up to CACHE_BODY_LIMIT each) are served from memory."""
    key = tuple(sorted(query.items()))
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    future = _in_flight.get(key)
    if future is None:
        future = asyncio.get_running_loop().run_in_executor(_EXECUTOR, _answer_bytes, query)
        _in_flight[key] = future
        future.add_done_callback(lambda f: _finish(key, f))
    return await asyncio.shield(future)  # a client that goes away cancels its wait, not the shared answer


def _finish(key: tuple, future: asyncio.Future) -> None:
    _in_flight.pop(key, None)
    if future.cancelled() or future.exception() is not None:
        return
    result = future.result()
    if len(result[1]) <= CACHE_BODY_LIMIT:
        _cache[key] = result
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)


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

    class Packed(web.Response):
        def enable_compression(self, *args, **kwargs) -> None:
            """Already gzip: ComfyUI's --enable-compress-response-body must not compress it a second time."""

    @server.routes.get("/higfa/schedule")
    async def get_schedule(request):
        status, body, packed = await answer_shared(dict(request.rel_url.query))
        kind = dict(status=status, content_type="application/json", charset="utf-8")
        if "gzip" in request.headers.get("Accept-Encoding", "").lower():  # browsers: a flood stays small on the wire
            return Packed(body=packed, headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}, **kind)
        return web.Response(body=body, headers={"Vary": "Accept-Encoding"}, **kind)
