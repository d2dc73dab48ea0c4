"""Hostile requests to ``opsq web`` (issue 13 hostile check): bad query values are 400s,
never 500s, and a request for an absurd time range costs what the stored history costs."""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis

from opsq.core.settings import default_settings
from opsq.web.app import CACHE_MAX_BYTES, Cached, Site, _remember
from opsq.web.views import stored_span
from tests.history.sim import Sim

# The private server over two days of real applied runs, shared with test_web.
from tests.history.test_web import private  # noqa: F401  # a fixture
from tests.history.webproc import WebProc

RETENTION = 90 * 86400.0


def target_id(web: WebProc) -> str:
    status, _, body = web.get("/api/v1/targets")
    assert status == 200, body
    return str(json.loads(body)["targets"][0]["id"])


def test_non_finite_times_are_400_not_500(private: tuple[WebProc, Sim]) -> None:  # noqa: F811
    """``from=nan``, ``to=inf``, ``to=1e308`` on history and incidents: a 400 naming the
    value (they were 500s: int(nan), int(inf), and Redis refusing ``nan`` as a score)."""
    web, _ = private
    base = f"/api/v1/targets/web/{target_id(web)}/history"
    for path in (f"{base}?from=nan", f"{base}?to=inf", f"{base}?to=-inf",
                 "/api/v1/incidents?from=nan", "/api/v1/incidents?to=inf"):  # fmt: skip
        status, _, body = web.get(path)
        assert status == 400, (path, status, body)
        assert b"is not a finite time" in body, body
    for resolution in ("auto", "raw", "hour", "day"):  # auto: raw (the last day of 1e308)
        status, _, body = web.get(f"{base}?to=1e308&resolution={resolution}")
        assert status == 200, (resolution, body)
        assert json.loads(body)["points"] == [], resolution


def test_a_huge_range_answers_with_the_stored_rollups(private: tuple[WebProc, Sim]) -> None:  # noqa: F811
    """``from=-1e11&to=1e11`` at hourly resolution answers with the same points as the
    last three days (before the fix the server walked 55 million hours, holding the
    event loop for minutes, and this request timed out)."""
    web, _ = private
    base = f"/api/v1/targets/web/{target_id(web)}/history?resolution=hour"
    status, _, huge = web.get(f"{base}&from=-100000000000&to=100000000000")
    assert status == 200, huge
    _, _, recent = web.get(f"{base}&from={0}")
    points = json.loads(huge)["points"]
    assert len(points) >= 48
    assert points == json.loads(recent)["points"]


def test_stored_span_clamps_to_retention_and_now() -> None:
    """The span looked up is at most retention plus three days, whatever was asked."""
    now = 1_800_000_000.0
    start, end = stored_span(-1e11, 1e11, now, RETENTION)
    assert (start, end) == (now - RETENTION - 2 * 86400, now + 86400)
    assert stored_span(now - 3600, now, now, RETENTION) == (now - 3600, now)
    assert stored_span(1e308 - 86400, 1e308, now, RETENTION) == (now + 86400, now + 86400)
    assert stored_span(-1e308, -1e300, now, RETENTION) == (now - RETENTION - 2 * 86400,) * 2


def test_the_answer_cache_is_bounded_in_bytes(redis_url: str) -> None:
    """Public mode caches by path and query string; a caller varying the query (``/?1``,
    ``/?2``...) kept 2,000 answers whatever their size (3 GB of 1.5 MB overviews). The
    cache now holds at most CACHE_MAX_BYTES, and a fresh answer is still cached."""
    client = aioredis.Redis.from_url(redis_url)
    site = Site(default_settings(), client)
    body = b"x" * (2**20)
    for n in range(200):
        _remember(site, f"/?{n}", Cached(time.monotonic() + 60, 200, body, "text/html", 3))
        held = sum(len(c.body) for c in site.cache.values())
        assert held <= CACHE_MAX_BYTES, n
    assert "/?199" in site.cache
