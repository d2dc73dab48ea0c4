"""One HTTP(S) attempt: send, follow redirects ourselves, read the body, judge.

Redirects are followed here rather than by httpx so that every hop runs under the
attempt's clock and a redirect loop ends as a clear ``redirect`` failure after
``max_redirects`` hops instead of an exception from deep inside the client. The body
is read (that is the transfer phase) but only its first :data:`MAX_BODY` bytes are
kept for ``body_regex``: a probe must not buffer a 2 GB download.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from opsq.core.config.probes import Target
from opsq.engines.probe import checks
from opsq.engines.probe.errors import ProbeFailure
from opsq.engines.probe.phases import PhaseClock
from opsq.engines.probe.transports import httpcore_trace

MAX_BODY = 1 << 20


@dataclass(slots=True)
class HttpReply:
    """What one attempt saw, before judging."""

    status_code: int
    headers: httpx.Headers
    body: str
    latency: float


async def fetch(
    client: httpx.AsyncClient, target: Target, budget: float, clock: PhaseClock
) -> HttpReply:
    """Send the request (following redirects if asked) and read the body."""
    began = time.perf_counter()
    request = client.build_request(
        target.method,
        target.url,
        headers=target.headers,
        content=target.body.encode() if target.body is not None else None,
        timeout=httpx.Timeout(budget),
        extensions={"trace": httpcore_trace},
    )
    response = await _send_following(client, request, target)
    try:
        clock.start("transfer")
        body = await _read_body(response)
        clock.stop("transfer")
    finally:
        await response.aclose()
    return HttpReply(
        status_code=response.status_code,
        headers=response.headers,
        body=body,
        latency=time.perf_counter() - began,
    )


async def _send_following(
    client: httpx.AsyncClient, request: httpx.Request, target: Target
) -> httpx.Response:
    hops = 0
    while True:
        response = await client.send(request, stream=True, follow_redirects=False)
        nxt = response.next_request
        if nxt is None or not target.follow_redirects:
            return response
        await response.aclose()
        if hops >= target.max_redirects:
            raise ProbeFailure("redirect", f"too many redirects (more than {target.max_redirects})")
        hops += 1
        nxt.extensions = {**request.extensions}
        request = nxt


async def _read_body(response: httpx.Response) -> str:
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
