"""One HTTP(S) attempt: send through an httpx transport, follow redirects, read, judge.

We build ``httpx.Request`` objects and hand them straight to an
``httpx.AsyncBaseTransport`` rather than going through ``httpx.AsyncClient``: the
client's cookie store, auth flow and URL merging cost about a fifth of a probe's CPU
time (measured with cProfile on the transport benchmark) and a probe needs none of
them. Redirects are therefore followed here, with httpx's rules (303, and 301/302
from POST, become GET; Authorization is dropped when leaving the origin), so every
hop runs under the attempt's clock and a redirect loop ends as a clear ``redirect``
failure after ``max_redirects`` hops. The body is always read (the transfer phase);
only with ``body_regex`` is it decoded, and only its first :data:`MAX_BODY` bytes kept.

The plain case (no request body, no ``body_regex``) on the aiohttp transport skips even
``httpx.Request``/``httpx.Response``: :meth:`DirectAiohttpTransport.direct` sends the
same request (same URL as httpx normalises it, same headers, no redirects, no
decompression) through the transport's aiohttp session, and errors pass through the
same httpx mapping. That cut the in-process engine's CPU per probe from about 475 to
380 us (asyncio loop, small responses, before the other optimisations). A redirect to
follow leaves the plain path after its first hop.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import httpx
from httpx_aiohttp.transport import map_aiohttp_exceptions
from multidict import CIMultiDict

from opsq.core.config.probes import Target
from opsq.core.version import version_info
from opsq.engines.probe import checks
from opsq.engines.probe.errors import ProbeFailure
from opsq.engines.probe.phases import PhaseClock
from opsq.engines.probe.transports import DirectAiohttpTransport, httpcore_trace

MAX_BODY = 1 << 20


@functools.cache
def default_headers() -> dict[str, str]:
    """Sent unless the target overrides them: the same on every transport.

    httpx's client would add its own, aiohttp's session its own, httpcore none; we
    bypass the client, so we name the prober and accept compression ourselves.
    """
    return {
        "User-Agent": f"opsq-probe/{version_info()['version']}",
        "Accept": "*/*",
        "Accept-Encoding": "gzip, deflate",
    }


REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


@dataclass(slots=True)
class HttpReply:
    """What one attempt saw, before judging."""

    status_code: int
    headers: httpx.Headers
    body: str
    latency: float


async def fetch(
    transport: httpx.AsyncBaseTransport, target: Target, budget: float, clock: PhaseClock
) -> HttpReply:
    """Send the request (following redirects if asked) and read the body."""
    began = time.perf_counter()
    if isinstance(transport, DirectAiohttpTransport) and _plain(target):
        first = await _fetch_direct(transport, target, clock, began)
        if isinstance(first, HttpReply):
            return first
        # A redirect to follow: the remaining hops take the general path.
        request = _redirected(_request(target, budget), *first)
        response = await _send_following(transport, request, target, clock, hops=1)
    else:
        request = _request(target, budget)
        response = await _send_following(transport, request, target, clock, hops=0)
    try:
        clock.start("transfer")
        body = await _read_body(response, keep=target.expect.body_regex is not None)
        clock.stop("transfer")
    finally:
        await response.aclose()
    return HttpReply(
        status_code=response.status_code,
        headers=response.headers,
        body=body,
        latency=time.perf_counter() - began,
    )


def _request(target: Target, budget: float) -> httpx.Request:
    return httpx.Request(
        target.method,
        target.url,
        headers=_headers(target),
        content=target.body.encode() if target.body is not None else None,
        extensions={"timeout": httpx.Timeout(budget).as_dict(), "trace": httpcore_trace},
    )


def _headers(target: Target) -> httpx.Headers:
    headers = httpx.Headers(default_headers())
    headers.update(target.headers)  # case-insensitive: "user-agent" replaces "User-Agent"
    return headers


def _plain(target: Target) -> bool:
    """No request body and no body regex: nothing for httpx's models to encode or decode."""
    return target.body is None and target.expect.body_regex is None


@functools.lru_cache(maxsize=65536)
def _wire_url(url: str) -> str:
    """The URL exactly as the httpx path sends it (httpx normalises and quotes it)."""
    return str(httpx.URL(url))


def _direct_headers(target: Target) -> CIMultiDict[str]:
    headers = CIMultiDict(default_headers())
    headers.update(target.headers)  # case-insensitive, like httpx.Headers.update
    return headers


async def _fetch_direct(
    transport: DirectAiohttpTransport,
    target: Target,
    clock: PhaseClock,
    began: float,
) -> HttpReply | tuple[int, str]:
    """The first hop straight through aiohttp; a redirect to follow comes back as
    ``(status, location)``. Errors are mapped to httpx's, as on the general path."""
    with map_aiohttp_exceptions():
        request = transport.direct(target.method, _wire_url(target.url), _direct_headers(target))
        async with request as response:
            clock.stop("ttfb")  # started by TimedConnector once connected
            headers = httpx.Headers(response.raw_headers)
            location = headers.get("location")
            if target.follow_redirects and location and response.status in REDIRECT_CODES:
                if target.max_redirects < 1:
                    raise ProbeFailure("redirect", _too_many(target))
                return response.status, location
            clock.start("transfer")
            async for _ in response.content.iter_any():  # raw bytes, like aiter_raw
                pass
            clock.stop("transfer")
    return HttpReply(
        status_code=response.status,
        headers=headers,
        body="",
        latency=time.perf_counter() - began,
    )


def _too_many(target: Target) -> str:
    return f"too many redirects (more than {target.max_redirects})"


async def _send_following(
    transport: httpx.AsyncBaseTransport,
    request: httpx.Request,
    target: Target,
    clock: PhaseClock,
    *,
    hops: int,
) -> httpx.Response:
    while True:
        response = await transport.handle_async_request(request)
        clock.stop("ttfb")  # aiohttp: TimedConnector started it; httpcore: already stopped
        response.request = request
        location = response.headers.get("location")
        if not (target.follow_redirects and location and response.status_code in REDIRECT_CODES):
            return response
        await response.aclose()
        if hops >= target.max_redirects:
            raise ProbeFailure("redirect", _too_many(target))
        hops += 1
        request = _redirected(request, response.status_code, location)


def _redirected(request: httpx.Request, status: int, location: str) -> httpx.Request:
    """The next hop's request, by the rules httpx.AsyncClient applies."""
    url = request.url.join(location)
    method = request.method
    if (status in (302, 303) and method != "HEAD") or (status == 301 and method == "POST"):
        method = "GET"
    headers = httpx.Headers(request.headers)
    headers.pop("host", None)  # recomputed from the new URL
    if url.host != request.url.host or url.port != request.url.port:
        headers.pop("authorization", None)
    content = None
    if method == request.method:
        content = request.content  # 307/308 resend the body
    else:
        headers.pop("content-length", None)
        headers.pop("transfer-encoding", None)
    return httpx.Request(
        method, url, headers=headers, content=content, extensions=request.extensions
    )


async def _read_body(response: httpx.Response, *, keep: bool) -> str:
    """Read the whole body; decode and keep its start only when a regex needs it."""
    if not keep:  # raw bytes: no decompression or charset parsing for nothing
        async for _ in response.aiter_raw():
            pass
        return ""
    kept = bytearray()
    async for chunk in response.aiter_bytes():
        if len(kept) < MAX_BODY:
            kept += chunk[: MAX_BODY - len(kept)]
    return bytes(kept).decode(response.encoding or "utf-8", errors="replace")


def judge(target: Target, reply: HttpReply, days_left: float | None) -> ProbeFailure | None:
    """The first failed expectation, in the order a human would check them."""
    expect = target.expect
    for failure in (
        checks.check_status(expect, reply.status_code),
        checks.check_headers(expect, reply.headers),
        checks.check_body(expect, reply.body),
        checks.check_latency(expect, reply.latency),
        checks.check_cert(expect, days_left),
    ):
        if failure is not None:
            return failure
    return None
