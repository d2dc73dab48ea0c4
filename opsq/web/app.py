"""``opsq web``: the status page, the JSON API and badges, on ``aiohttp.web``.

Design:

- **Read-only.** Every route is GET/HEAD; nothing here writes to Redis. Any other
  method gets 401 without credentials (private mode) or 405.
- **Private by default.** HTTP basic auth with ``web.user``/``web.password`` (compared
  in constant time) on everything except ``/healthz``, ``/readyz``, ``/metrics`` and
  ``/static/``, which carry no data about targets. ``web.public: true`` serves the same
  pages and API without a password.
- **No secret in any answer.** Target URLs and error details pass through
  :mod:`opsq.core.redact` (user info, secret-named query parameters); a target is named
  in URLs by an id (a hash of its key), never by its URL.
- **Cheap under load.** Each page or API answer is rendered from a bounded number of
  Redis round trips (:mod:`opsq.engines.history.reader`; the count is in the
  ``X-Opsq-Redis-Roundtrips`` header) and reused for ``web.cache_ttl`` seconds.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape

from opsq.core.config.history import WebSettings
from opsq.core.errors import RedisCommandError, RedisUnavailable
from opsq.core.metrics import web as metrics
from opsq.core.redact import redact_text
from opsq.core.redis_errors import redis_errors
from opsq.core.settings import Settings
from opsq.core.version import version_info
from opsq.engines.history import reader as history
from opsq.engines.history.reader import HistoryReader, TargetView
from opsq.web import charts
from opsq.web.badges import NO_DATA, format_percent

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")
CACHE_MAX_ENTRIES = 2000
CACHE_MAX_BYTES = 64 * 2**20
"""Cached answers are at most this big in all (an overview of 1,000 targets is 1.5 MB)."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Cached:
    expires: float
    status: int
    body: bytes
    content_type: str
    roundtrips: int


@dataclass
class Site:
    """What every handler shares: settings, the reader, templates, cache and metrics."""

    settings: Settings
    client: aioredis.Redis[bytes]
    clock: Callable[[], float] = time.time
    cache: dict[str, Cached] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reader = HistoryReader(self.client)
        self.templates = templates()

    @property
    def config(self) -> WebSettings:
        return self.settings.web

    def render(self, name: str, **context: Any) -> web.Response:
        page = self.templates.get_template(name).render(
            title=self.config.title,
            root="/",
            version=version_info().get("version", ""),
            now=self.clock(),
            **context,
        )
        return web.Response(text=page, content_type="text/html")


def templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        clock=_clock,
        ago=_ago,
        percent=format_percent,
        ms=_ms,
        duration=_duration,
        sparkline=charts.sparkline,
        row=overview_row,
        redact=lambda t: redact_text(t) if t else "",
    )
    return env


def overview_row(v: TargetView, now: float) -> str:
    """One target's row of the overview, built here rather than in the template: with
    1,000 targets the row is most of the page's render time, and an f-string is several
    times faster than Jinja's per-node output (escaping is done the same way)."""
    href = f"/sets/{quote(v.set, safe='')}/{v.id}"
    reason = (
        f' <span class="reason">{escape(v.reason)}</span>' if v.state != "up" and v.reason else ""
    )
    cells = "".join(
        f'<td class="num uptime" data-window="{w}">{format_percent(v.uptime.get(w))}</td>'
        for w in ("24h", "7d", "30d")
    )
    url = escape(v.url)
    state = escape(v.state)
    return (
        f'<tr class="target {state}" data-target-id="{v.id}" data-state="{state}">'
        f'<td><span class="dot {state}" title="{state}"></span></td>'
        f'<td class="name"><a href="{href}">{escape(v.name)}</a>'
        f'<span class="url" title="{url}">{url}</span></td>'
        f'<td class="state">{state}{reason}</td>'
        f'<td class="since" title="{_clock(v.since)}">{_ago(v.since, now)}</td>{cells}'
        f"<td>{charts.sparkline(v.spark)}</td>"
        f'<td class="num">{_ms(v.latency.quantile(0.95))}</td></tr>'
    )


def _clock(ts: float | None) -> str:
    if not ts:
        return NO_DATA
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return NO_DATA
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return " ".join(shown) or "0s"


def _ago(ts: float | None, now: float) -> str:
    return NO_DATA if not ts else _duration(now - ts)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return NO_DATA
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


# --- middlewares ---------------------------------------------------------------------------
def auth_middleware(site: Site) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or request.path.startswith("/static/"):
            return await handler(request)
        if not site.config.public and not _authorized(site, request.headers.get("Authorization")):
            return web.Response(
                status=401,
                text="authentication required\n",
                headers={"WWW-Authenticate": 'Basic realm="opsq"'},
            )
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        return await handler(request)

    return check


def _authorized(site: Site, header: str | None) -> bool:
    password = site.config.password
    if not header or not header.startswith("Basic ") or password is None:
        return False
    try:
        user, _, given = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    ok_user = hmac.compare_digest(user.encode(), site.config.user.encode())
    ok_password = hmac.compare_digest(given.encode(), password.get_secret_value().encode())
    return ok_user and ok_password


def cache_middleware(site: Site) -> Any:
    """Reuse answers for ``web.cache_ttl``; count round trips; map Redis errors to 503."""

    @web.middleware
    async def cached(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "?"
        if request.path in OPEN_PATHS or request.path.startswith("/static/"):
            return await handler(request)
        now = time.monotonic()
        hit = site.cache.get(request.path_qs)
        if hit is not None and hit.expires > now:
            metrics.REQUESTS.labels(route, str(hit.status)).inc()
            return _response(hit, cache="hit")
        counter = history.Counter()
        token = history.ROUNDTRIPS.set(counter)
        started = time.perf_counter()
        try:
            with redis_errors(f"read history for {request.path}"):
                response = await handler(request)
        except RedisUnavailable as exc:
            log.warning("%s", exc)
            response = web.Response(status=503, text="Redis is unavailable; retry shortly\n")
        except RedisCommandError as exc:
            log.error("%s", exc)
            response = web.Response(status=500, text="Redis refused a command; see the log\n")
        finally:
            history.ROUNDTRIPS.reset(token)
        metrics.DURATION.labels(route).observe(time.perf_counter() - started)
        metrics.ROUNDTRIPS.labels(route).inc(counter.value)
        metrics.REQUESTS.labels(route, str(response.status)).inc()
        if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
            return response
        entry = Cached(
            now + site.config.cache_ttl,
            response.status,
            response.body,
            response.content_type,
            counter.value,
        )
        if response.status == 200 and site.config.cache_ttl > 0:
            _remember(site, request.path_qs, entry)
        return _response(entry, cache="miss")

    return cached


def _remember(site: Site, key: str, entry: Cached) -> None:
    """Bounded by answers and by bytes: the key is the path with its query string, which
    a caller may vary at will (``/?1``, ``/?2``... each kept a 1.5 MB overview of 1,000
    targets: 2,000 of them were 3 GB, asked for without a password in public mode)."""
    if len(entry.body) > CACHE_MAX_BYTES // 4:
        return
    if _full(site, entry):  # drop expired answers, then everything
        now = time.monotonic()
        site.cache = {k: v for k, v in site.cache.items() if v.expires > now}
        if _full(site, entry):
            site.cache.clear()
    site.cache[key] = entry


def _full(site: Site, entry: Cached) -> bool:
    held = sum(len(cached.body) for cached in site.cache.values())
    return len(site.cache) >= CACHE_MAX_ENTRIES or held + len(entry.body) > CACHE_MAX_BYTES


def _response(entry: Cached, cache: str) -> web.Response:
    headers = {
        "X-Opsq-Cache": cache,
        "X-Opsq-Redis-Roundtrips": str(entry.roundtrips if cache == "miss" else 0),
        "Cache-Control": "no-cache",
    }
    return web.Response(
        status=entry.status, body=entry.body, content_type=entry.content_type, headers=headers
    )


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


def create_app(
    settings: Settings,
    client: aioredis.Redis[bytes] | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The application; *client* defaults to one for ``settings.broker_url``."""
    from opsq.web import views  # noqa: PLC0415 - views import this module

    if client is None:
        client = aioredis.Redis.from_url(settings.broker_url, socket_timeout=10)
    site = Site(settings, client, clock)
    app = web.Application(middlewares=[auth_middleware(site), cache_middleware(site)])
    views.add_routes(app, site)
    app.router.add_static("/static/", HERE / "static")

    async def close(_: web.Application) -> None:
        await client.aclose()  # type: ignore[attr-defined]  # types-redis predates aclose

    app.on_cleanup.append(close)
    return app
