"""A flood of /higfa/schedule requests does not slow the server's other routes (issue 27, item 8: 400 concurrent
requests slowed /system_stats to 2.9 s). The route answers identical requests once (the ones in flight share
one computation, recent answers are cached) and computes at most one answer at a time, off the event loop."""

from __future__ import annotations

import asyncio
import gzip
import json
import statistics
import time
import urllib.request

import pytest

pytestmark = pytest.mark.comfyui
HEAVY = "preset=higfa&points=1001&confidence=" + ",".join(str(i / 15) for i in range(16))  # the largest answer


async def _flood(url: str, queries: list[str]) -> tuple[list[float], list[int]]:
    """Sends every query at once and times /system_stats every 0.2 s until the last one is answered (at least 5
    times). Returns (probe seconds, statuses of the flood)."""
    import aiohttp

    limits = aiohttp.TCPConnector(limit=0)  # no client-side queue: all requests reach the server together
    async with aiohttp.ClientSession(connector=limits, timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def one(query: str) -> int:
            async with session.get(f"{url}/higfa/schedule?{query}") as r:
                await r.read()
                return r.status

        flood = [asyncio.create_task(one(q)) for q in queries]
        # The server first accepts the 400 connections (~1 ms of event loop each); then it computes.
        await asyncio.sleep(1.0)
        seconds: list[float] = []
        while len(seconds) < 5 or not all(t.done() for t in flood):
            start = time.monotonic()
            async with session.get(f"{url}/system_stats") as r:
                await r.read()
                assert r.status == 200
            seconds.append(time.monotonic() - start)
            await asyncio.sleep(0.2)
        statuses = await asyncio.gather(*flood)
    return seconds, statuses


@pytest.mark.parametrize("kind", ["identical", "distinct"])
def test_other_routes_stay_fast_under_400_schedule_requests(server, kind):
    if kind == "identical":
        queries = [HEAVY] * 400
    else:  # no two alike: the cache cannot help, only the bound on concurrent computations
        queries = [f"preset=higfa&points=1001&stage_boundary={0.3 + i / 1000:.3f}" for i in range(400)]
    seconds, statuses = asyncio.run(_flood(server.url, queries))
    assert statuses == [200] * 400
    print(f"/system_stats under the {kind} flood: {len(seconds)} probes, median {statistics.median(seconds):.3f} s, "
          f"max {max(seconds):.3f} s")
    # Before the fix (shared default executor, no sharing, no gzip): identical flood median 0.133 s, max 1.6 s
    # (2.9 s in the probe). After: medians 0.004-0.01 s, max 0.007-0.06 s on 2 shared cores.
    # The target (other routes answer in under 0.5 s) as a median, loose on purpose: a test is no
    # benchmark, and a CI machine may be busy; the mechanism itself is asserted exactly below (one computation
    # per identical query, bounded cache, nothing left in flight).
    assert statistics.median(seconds) < 0.5, seconds


def test_identical_requests_share_one_computation_and_the_cache_is_bounded(comfy, monkeypatch):
    routes = comfy.pack.nodes.routes
    calls = []
    real = routes.answer

    def counted(query):
        calls.append(dict(query))
        time.sleep(0.05)  # still computing when the other requests arrive
        return real(query)

    monkeypatch.setattr(routes, "answer", counted)
    monkeypatch.setattr(routes, "_cache", type(routes._cache)())
    query = {"preset": "higfa", "points": "11", "confidence": "0,1"}

    async def main():
        first = await asyncio.gather(*[routes.answer_shared(dict(query)) for _ in range(50)])
        again = await routes.answer_shared(dict(reversed(list(query.items()))))  # same query, other order
        others = [await routes.answer_shared({**query, "stage_boundary": f"{0.1 + i / 1000}"})
                  for i in range(routes.CACHE_SIZE + 5)]
        return first, again, others

    first, again, others = asyncio.run(main())
    assert len({body for _, body, _ in first}) == 1 and first[0][0] == 200 and again == first[0]
    assert gzip.decompress(first[0][2]) == first[0][1]
    assert len(json.loads(first[0][1])["progress"]) == 11
    assert len(calls) == 1 + routes.CACHE_SIZE + 5  # 51 identical requests: one computation
    assert len(routes._cache) == routes.CACHE_SIZE and not routes._in_flight
    assert all(status == 200 for status, _, _ in others)


def test_gzip_answer_is_the_plain_answer(server):
    """Clients that accept gzip (browsers, aiohttp) get the same JSON packed; others get it plain."""
    url = f"{server.url}/higfa/schedule?{HEAVY}"
    with urllib.request.urlopen(url, timeout=60) as r:
        plain = r.read()
        assert r.headers.get("Content-Encoding") is None
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=60) as r:
        packed = r.read()
        assert r.headers["Content-Encoding"] == "gzip" and r.headers["Content-Type"].startswith("application/json")
    assert gzip.decompress(packed) == plain and len(packed) < len(plain) / 20
    assert len(json.loads(plain)["curves"]) == 16
