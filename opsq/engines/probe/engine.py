"""The probe engine: many targets concurrently, each under one deadline.

Design:

* **One deadline per probe** (``target.timeout``) bounds every attempt *and* backoff
  sleep together, and each attempt gets a share of it (:mod:`.deadline`), so a
  timed-out attempt leaves time for a retry. Each attempt runs under
  ``asyncio.timeout(share)``, so no attempt outlives it whatever the transport's own
  per-operation timeouts do.
* **Retries only for temporary failures** in ``target.retry_on`` (timeout, connect,
  5xx, dns), with full-jitter backoff (:func:`opsq.core.backoff.full_jitter`) that is
  skipped when the sleep would cross the deadline. A 4xx, a failed expectation or a
  certificate verification failure is final.
* **Bounded concurrency**: a global semaphore, a per-host semaphore and, when given,
  a shared :class:`RateLimiter` (the pipeline implements it as a Redis token bucket)
  awaited before every attempt. The wait for a token pauses the deadline and is
  reported as the ``ratelimit`` phase: our own throttle never makes a target down.
* **Nothing escapes**: every exception from an attempt is translated once
  (:func:`.errors.classify`) into an error kind and a short reason; ``probe_many``
  returns one :class:`ProbeResult` per target, in input order.
* **No loop captured at construction**: httpx transports and aiohttp sessions are created
  lazily inside the running loop, so an engine can be built anywhere (and tests need
  no patching).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from opsq.core import aio
from opsq.core.backoff import full_jitter
from opsq.core.config.base import default_of
from opsq.core.config.probes import DnsQuery, Target, dns_query
from opsq.core.settings import MetricsSettings, ProbesSettings
from opsq.engines.probe import dnsquery, net
from opsq.engines.probe.deadline import Deadline
from opsq.engines.probe.errors import ProbeFailure, classify
from opsq.engines.probe.http import fetch, judge
from opsq.engines.probe.phases import CURRENT, PhaseClock
from opsq.engines.probe.result import ErrorKind, ProbeResult
from opsq.engines.probe.tally import MetricTally
from opsq.engines.probe.tls import TlsContexts, TlsKey, days_left, tls_key
from opsq.engines.probe.transports import TransportName, build_transport

_TLS_CLOSE_GRACE_S = 0.25
"""How long aclose() lets TLS connections finish closing before the loop may close."""

ResultCallback = Callable[[ProbeResult], Awaitable[None] | None]


@functools.lru_cache(maxsize=65536)
def _url_parts(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a target URL, parsed once (probe sets repeat URLs)."""
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port


@functools.lru_cache(maxsize=4096)
def _dns_query(url: str) -> DnsQuery | None:
    return dns_query(url)


class RateLimiter(Protocol):
    """Waits until ``host`` may be probed again (a token bucket shared by workers)."""

    async def acquire(self, host: str) -> None: ...


@dataclass(slots=True)
class _Outcome:
    """The verdict of one attempt."""

    status_code: int | None = None
    failure: ProbeFailure | None = None
    cert_expires_at: float | None = None
    phases: dict[str, float] | None = None


class _HostLimits:
    """Per-host semaphores, dropped when no probe of that host is running."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._sems: dict[str, tuple[asyncio.Semaphore, int]] = {}

    def enter(self, host: str) -> asyncio.Semaphore:
        sem, users = self._sems.get(host, (None, 0))
        sem = sem or asyncio.Semaphore(self._limit)
        self._sems[host] = (sem, users + 1)
        return sem

    def leave(self, host: str) -> None:
        sem, users = self._sems[host]
        if users <= 1:
            del self._sems[host]
        else:
            self._sems[host] = (sem, users - 1)


class ProbeEngine:
    """Probes HTTP(S), TCP and DNS targets; see the module docstring for the design."""

    def __init__(
        self,
        *,
        concurrency: int = default_of(ProbesSettings, "concurrency"),
        per_host_concurrency: int = default_of(ProbesSettings, "per_host_concurrency"),
        rate_limiter: RateLimiter | None = None,
        url_labels: bool = default_of(MetricsSettings, "url_labels"),
        transport: TransportName = "aiohttp",
        ssl_context: ssl.SSLContext | None = None,
        source_address: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1 or per_host_concurrency < 1:
            raise ValueError("concurrency and per_host_concurrency must be at least 1")
        self._concurrency = concurrency
        self._per_host = per_host_concurrency
        self._rate_limiter = rate_limiter
        self._tally = MetricTally(url_labels=url_labels)
        self._transport: TransportName = transport
        self._tls = TlsContexts(ssl_context)
        self._source = source_address
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not cryptography
        self._transports: dict[tuple[TlsKey, bool], httpx.AsyncBaseTransport] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._global = asyncio.Semaphore(concurrency)
        self._hosts = _HostLimits(per_host_concurrency)
        self._certs: dict[str, float] = {}
        self._tls_used = False

    async def __aenter__(self) -> ProbeEngine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every transport (and its connections) this engine opened."""
        self._tally.flush()
        transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            await transport.aclose()
        if self._tls_used and transports:
            # A closed TLS connection still exchanges close_notify with the peer on the
            # loop; closing the loop first makes uvloop fail with EBUSY (seen under load).
            # aiohttp's documented remedy for graceful shutdown is a short sleep.
            self._tls_used = False
            await asyncio.sleep(_TLS_CLOSE_GRACE_S)

    async def probe_many(
        self, targets: Sequence[Target], on_result: ResultCallback | None = None
    ) -> list[ProbeResult]:
        """Probe all targets concurrently; results in input order, one per target."""

        async def one(target: Target) -> ProbeResult:
            result = await self._probe(target)
            if on_result is not None:
                maybe = on_result(result)
                if inspect.isawaitable(maybe):
                    await maybe
            return result

        try:
            return list(await asyncio.gather(*(one(t) for t in targets)))
        finally:
            self._tally.flush()

    async def probe(self, target: Target) -> ProbeResult:
        """Probe one target; never raises for the target's failure."""
        result = await self._probe(target)
        self._tally.flush()
        return result

    async def _probe(self, target: Target) -> ProbeResult:
        """:meth:`probe` with its metrics left in the tally (flushed by the caller or
        within :data:`.tally.FLUSH_AFTER_S`)."""
        self._bind_loop()
        host = _url_parts(target.url)[1]
        host_sem = self._hosts.enter(host)
        try:
            # Host slot first: a probe queued behind a busy host must not sit on one
            # of the global slots that probes of other hosts could be using.
            async with host_sem, self._global:
                self._tally.started()
                try:
                    result = await self._probe_with_retries(target)
                finally:
                    self._tally.stopped()
        finally:
            self._hosts.leave(host)
        self._tally.finished(result)
        return result

    def _bind_loop(self) -> None:
        """Tie semaphores and transports to the running loop (a new loop gets new ones).

        asyncio primitives and aiohttp sessions belong to one loop; an engine reused
        across ``asyncio.run`` calls (one per Celery task, say) must not carry them
        over. Call :meth:`aclose` before a loop ends to close its connections.
        """
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        self._loop = loop
        self._global = asyncio.Semaphore(self._concurrency)
        self._hosts = _HostLimits(self._per_host)
        self._transports = {}

    async def _probe_with_retries(self, target: Target) -> ProbeResult:
        started_at = time.time()
        deadline = Deadline(target.timeout)
        attempts = 0
        while True:
            attempts += 1
            outcome = await self._attempt(target, deadline, target.retries + 2 - attempts)
            failure = outcome.failure
            if failure is None or not self._retryable(target, failure, attempts):
                break
            pause = full_jitter(
                attempts - 1, base=target.backoff_base, cap=target.backoff_cap, rng=self._rng.random
            )
            if not deadline.fits(pause):
                break
            await asyncio.sleep(pause)
        return ProbeResult(
            name=target.name,
            url=target.url,
            group=target.group,
            up=failure is None,
            status_code=outcome.status_code,
            attempts=attempts,
            duration_s=round(deadline.elapsed(), 6),
            phases=outcome.phases or {},
            error=failure.message if failure else None,
            error_kind=failure.kind if failure else None,
            cert_days_left=days_left(outcome.cert_expires_at),
            started_at=started_at,
            cert_expires_at=outcome.cert_expires_at,
        )

    @staticmethod
    def _retryable(target: Target, failure: ProbeFailure, attempts: int) -> bool:
        return attempts <= target.retries and failure.retry_as in target.retry_on

    async def _attempt(self, target: Target, deadline: Deadline, attempts_left: int) -> _Outcome:
        """One try, bounded by its share of the deadline; never raises."""
        clock = PhaseClock()
        token = CURRENT.set(clock)
        outcome = _Outcome()
        budget = 0.0
        try:
            # Everything local first (transport, TLS context): a token is spent on
            # contacting the host, not on our own set-up, or requests granted together
            # would reach the host late and bunched with the next ones.
            transport = self._prepare(target)
            await self._take_token(target, clock, deadline)
            budget = deadline.share(attempts_left)
            async with asyncio.timeout(budget):
                await self._dispatch(target, transport, budget, clock, outcome)
        except ProbeFailure as failure:
            outcome.failure = failure
        except Exception as exc:  # every library error becomes a verdict here
            kind, message = classify(exc, timeout=budget)
            outcome.failure = ProbeFailure(kind, message)
        finally:
            CURRENT.reset(token)
        outcome.phases = clock.snapshot()
        return outcome

    def _prepare(self, target: Target) -> httpx.AsyncBaseTransport | None:
        """The HTTP transport an http(s) target will use, created now if needed."""
        scheme = _url_parts(target.url)[0]
        if scheme not in ("http", "https"):
            return None
        return self._transport_for(target, https=scheme == "https")

    async def _take_token(self, target: Target, clock: PhaseClock, deadline: Deadline) -> None:
        """Wait for the rate limiter, outside the deadline (see :mod:`.deadline`)."""
        if self._rate_limiter is None:
            return
        began = time.monotonic()
        clock.start("ratelimit")
        try:
            await self._rate_limiter.acquire(_url_parts(target.url)[1])
        finally:
            clock.stop("ratelimit")
            deadline.pause(time.monotonic() - began)

    async def _dispatch(
        self,
        target: Target,
        transport: httpx.AsyncBaseTransport | None,
        budget: float,
        clock: PhaseClock,
        outcome: _Outcome,
    ) -> None:
        """Run the attempt: HTTP(S) when :meth:`_prepare` gave a transport, else TCP/DNS."""
        if transport is not None:
            reply = await fetch(transport, target, max(budget, 0.001), clock)
            outcome.status_code = reply.status_code
            outcome.cert_expires_at = self._cert_expiry(target, clock)
            outcome.failure = judge(target, reply, days_left(outcome.cert_expires_at))
        elif _url_parts(target.url)[0] == "tcp":
            await net.tcp_connect(target, clock, self._source)
        elif (query := _dns_query(target.url)) is not None:
            await dnsquery.probe(target, query, clock, budget, self._source)
        else:
            await net.dns_lookup(target, clock)

    def _cert_expiry(self, target: Target, clock: PhaseClock) -> float | None:
        scheme, host, port = _url_parts(target.url)
        if scheme != "https":
            return None
        self._tls_used = True
        key = f"{host}:{port or 443}"
        if clock.cert_expires_at is None:  # a reused connection: what it showed last
            return self._certs.get(key)
        self._certs[key] = clock.cert_expires_at
        return clock.cert_expires_at

    def _transport_for(self, target: Target, *, https: bool) -> httpx.AsyncBaseTransport:
        # Plain http:// needs no TLS files: their absence on this worker must not matter.
        tls = tls_key(target) if https else (target.verify_tls, None, None, None)
        key = (tls, target.reuse_connections)
        transport = self._transports.get(key)
        if transport is None:
            context = self._tls.get(target) if https else self._tls.plain(target.verify_tls)
            transport = build_transport(
                self._transport,
                tls=context,
                reuse=target.reuse_connections,
                source_address=self._source,
            )
            self._transports[key] = transport
        return transport


def run_probes(targets: Sequence[Target], **engine_kwargs: Any) -> list[ProbeResult]:
    """Synchronous convenience: probe ``targets`` in a fresh event loop (uvloop if
    installed, see :mod:`opsq.core.aio`)."""

    async def main() -> list[ProbeResult]:
        async with ProbeEngine(**engine_kwargs) as engine:
            return await engine.probe_many(targets)

    return aio.run(main())


__all__ = ["ErrorKind", "ProbeEngine", "RateLimiter", "ResultCallback", "run_probes"]
