"""Routes of ``opsq web``: pages, ``/api/v1/`` and badges (all read-only).

JSON field names are part of the API (the README's "Status page" section documents
them); add fields, never rename one. Times are epoch seconds (float), durations and
latencies seconds, uptimes fractions 0..1 (``null``: no judged run in the window).
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest

from opsq.engines.history import windows
from opsq.engines.history.raw import Sample
from opsq.engines.history.reader import SEVERITY, TargetView, incident_api, rollup_api
from opsq.web import charts
from opsq.web.app import Site, json_response
from opsq.web.badges import state_badge, uptime_badge

PAGE_HOURS = 24
"""The target page's raw charts cover this many hours."""
RAW_POINTS_MAX = 20_000
RESOLUTIONS = ("auto", "raw", "hour", "day")


def add_routes(app: web.Application, site: Site) -> None:
    routes = Views(site)
    app.router.add_get("/", routes.overview)
    app.router.add_get("/sets/{set}/{id}", routes.target_page)
    app.router.add_get("/api/v1/status", routes.api_status)
    app.router.add_get("/api/v1/targets", routes.api_targets)
    app.router.add_get("/api/v1/targets/{set}/{id}", routes.api_target)
    app.router.add_get("/api/v1/targets/{set}/{id}/history", routes.api_history)
    app.router.add_get("/api/v1/incidents", routes.api_incidents)
    app.router.add_get("/badge/{set}/{id}/state.svg", routes.badge_state)
    app.router.add_get("/badge/{set}/{id}/uptime.svg", routes.badge_uptime)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_get("/metrics", routes.metrics)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=message + "\n")


def parse_time(value: str | None, default: float) -> float:
    """Epoch seconds or ISO 8601 (``2026-01-01T00:00:00Z``); nan and inf are refused."""
    if value is None or value == "":
        return default
    try:
        parsed = float(value)
    except ValueError:
        parsed = _iso(value)
    if not math.isfinite(parsed):
        raise _bad_request(f"{value!r} is not a finite time")
    return parsed


def _iso(value: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise _bad_request(f"{value!r} is neither epoch seconds nor ISO 8601") from exc


def stored_span(start: float, end: float, now: float, retention: float) -> tuple[float, float]:
    """The part of [start, end] that can hold history: nothing is kept longer than
    *retention* (plus the day a key's TTL outlives it) nor recorded ahead of now.

    Rollups are looked up period by period, so an unclamped ``from=-1e11&to=1e11`` made
    one request walk 55 million hours for minutes of CPU on the event loop, freezing
    the page for everyone (and in public mode, anyone could send it)."""
    low, high = now - retention - 2 * windows.DAY_S, now + windows.DAY_S
    return min(max(start, low), high), max(min(end, high), low)


class Views:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.reader = site.reader

    # --- pages -------------------------------------------------------------------------
    async def overview(self, request: web.Request) -> web.Response:
        now = self.site.clock()
        sets = await self.reader.overview(now)
        totals = Counter(v.state for _, views in sets for v in views)
        problems = [v for _, views in sets for v in views if v.state in ("down", "degraded")]
        problems.sort(key=lambda v: (SEVERITY[v.state], -v.since))
        return self.site.render(
            "overview.html",
            sets=sets,
            totals={s: totals.get(s, 0) for s in SEVERITY},
            targets=sum(len(views) for _, views in sets),
            problems=problems,
        )

    async def _target(self, request: web.Request, raw_hours: float) -> tuple[Any, ...]:
        now = self.site.clock()
        set_name, wanted = request.match_info["set"], request.match_info["id"]
        key = await self.reader.resolve(set_name, wanted)
        if key is None:
            raise web.HTTPNotFound(text=f"no target {wanted} in set {set_name}\n")
        found = await self.reader.target(set_name, key, now, now - raw_hours * 3600)
        if found is None:
            raise web.HTTPNotFound(text=f"no target {wanted} in set {set_name}\n")
        return (now, *found)

    async def target_page(self, request: web.Request) -> web.Response:
        now, view, samples, incidents = await self._target(request, PAGE_HOURS)
        start = now - PAGE_HOURS * 3600
        if samples:  # a younger target: the charts cover what there is
            start = max(start, samples[0].at - 0.02 * (now - samples[0].at))
        return self.site.render(
            "target.html",
            v=view,
            incidents=incidents,
            span=now - start,
            phase_chart=charts.phase_chart(samples, start, now),
            strip=charts.state_strip(samples, start, now),
            days=charts.day_bars(view.days),
            per_location=_per_location(samples),
        )

    # --- API ---------------------------------------------------------------------------
    async def api_status(self, request: web.Request) -> web.Response:
        now = self.site.clock()
        sets = await self.reader.overview(now)
        out, totals = [], Counter[str]()
        for name, views in sets:
            counts = Counter(v.state for v in views)
            totals.update(counts)
            out.append(
                {
                    "name": name,
                    "targets": len(views),
                    **{s: counts.get(s, 0) for s in SEVERITY},
                    "open_incidents": sum(v.open_incident is not None for v in views),
                }
            )
        return json_response(
            {
                "generated_at": now,
                "sets": out,
                "totals": {
                    "targets": sum(totals.values()),
                    **{s: totals.get(s, 0) for s in SEVERITY},
                },
                "open_incidents": sum(s["open_incidents"] for s in out),
            }
        )

    async def api_targets(self, request: web.Request) -> web.Response:
        now = self.site.clock()
        only = request.query.get("set")
        sets = await self.reader.overview(now)
        targets = [v.to_api() for name, views in sets if only in (None, name) for v in views]
        return json_response({"generated_at": now, "targets": targets})

    async def api_target(self, request: web.Request) -> web.Response:
        now, view, _, incidents = await self._target(request, 0)
        data = view.to_api()
        data["incidents"] = [incident_api(i, now) for i in incidents[:20]]
        return json_response({"generated_at": now, "target": data})

    async def api_history(self, request: web.Request) -> web.Response:
        now = self.site.clock()
        end = parse_time(request.query.get("to"), now)
        start = parse_time(request.query.get("from"), end - 86400)
        resolution = request.query.get("resolution", "auto")
        if resolution not in RESOLUTIONS or start > end:
            raise _bad_request(f"resolution must be one of {RESOLUTIONS} and from <= to")
        if resolution == "auto":
            resolution = _auto_resolution(start, end, now, self.site.settings.history.raw_retention)
        set_name, wanted = request.match_info["set"], request.match_info["id"]
        key = await self.reader.resolve(set_name, wanted)
        if key is None:
            raise web.HTTPNotFound(text=f"no target {wanted} in set {set_name}\n")
        answer: dict[str, Any] = {
            "generated_at": now,
            "set": set_name,
            "target_id": wanted,
            "resolution": resolution,
            "from": start,
            "to": end,
        }
        kept = stored_span(start, end, now, self.site.settings.history.retention)
        if resolution == "raw":
            samples = await self.reader.raw_range(set_name, key, *kept, RAW_POINTS_MAX + 1)
            answer["truncated"] = len(samples) > RAW_POINTS_MAX
            answer["points"] = [s.to_dict() for s in samples[:RAW_POINTS_MAX]]
        else:
            kind = "h" if resolution == "hour" else "d"
            rollups = await self.reader.rollups(set_name, key, kind, *kept)
            answer["truncated"] = False
            answer["points"] = [rollup_api(kind, acc) for acc in rollups]
        return json_response(answer)

    async def api_incidents(self, request: web.Request) -> web.Response:
        now = self.site.clock()
        end = parse_time(request.query.get("to"), now)
        start = parse_time(request.query.get("from"), end - 90 * 86400)
        try:
            limit = min(max(int(request.query.get("limit", "100")), 1), 500)
        except ValueError as exc:
            raise _bad_request("limit must be an integer 1..500") from exc
        names = [request.query["set"]] if "set" in request.query else await self.reader.sets()
        incidents = await self.reader.incidents(names, start, end, limit)
        if request.query.get("open") in ("true", "1"):
            incidents = [i for i in incidents if i.ended_at is None]
        return json_response(
            {"generated_at": now, "incidents": [incident_api(i, now) for i in incidents]}
        )

    # --- badges --------------------------------------------------------------------------
    async def _badge_view(self, request: web.Request) -> TargetView:
        _, view, _, _ = await self._target(request, 0)
        return view  # type: ignore[no-any-return]

    async def badge_state(self, request: web.Request) -> web.Response:
        view = await self._badge_view(request)
        label = request.query.get("label", view.name)[:40]
        return web.Response(text=state_badge(label, view.state), content_type="image/svg+xml")

    async def badge_uptime(self, request: web.Request) -> web.Response:
        window = request.query.get("window", "30d")
        if window not in windows.WINDOWS:
            raise _bad_request(f"window must be one of {list(windows.WINDOWS)}")
        view = await self._badge_view(request)
        label = request.query.get("label", f"uptime {window}")[:40]
        return web.Response(
            text=uptime_badge(label, view.uptime[window]), content_type="image/svg+xml"
        )

    # --- operations ------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            await self.site.client.ping()
        except Exception:  # any failure means "not ready"
            return web.Response(status=503, text="redis unreachable\n")
        return web.Response(text="ready\n")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), content_type="text/plain", charset="utf-8")


def _auto_resolution(start: float, end: float, now: float, raw_retention: float) -> str:
    if end - start <= 2 * 86400 and start >= now - raw_retention:
        return "raw"
    return "hour" if end - start <= 14 * 86400 else "day"


def _per_location(samples: list[Sample]) -> dict[str, float | None]:
    """Each location's share of answered runs in the raw window (sets with several)."""
    seen: dict[str, list[int]] = {}
    for sample in samples:
        for name, (verdict, _reason, _latency) in sample.locations.items():
            if verdict == "missing":
                continue
            counts = seen.setdefault(name, [0, 0])
            counts[0] += verdict in ("up", "degraded")
            counts[1] += 1
    return {name: up / total if total else None for name, (up, total) in seen.items()}
