"""httpx transports for probing: over aiohttp (default) or httpx's own (httpcore).

Users see httpx either way. The transport was chosen by measurement on the project's
2-core machine (see ``bench/probe_transports.py`` and the README): httpx's own
transport tops out near 1.1k fresh connections/s and costs about twice the CPU per
probe of the ``httpx-aiohttp`` transport, so that is the default;
``transport="httpx"`` remains.

Phase timings come from hooks that feed the attempt's :class:`PhaseClock`:

* aiohttp: :class:`TimedConnector`, which times name resolution, opens the TCP socket
  and performs the TLS handshake as two timed steps (aiohttp's own connection trace
  covers both at once), reads the earliest expiry of the certificate chain the server
  sent, even when verification is off (:mod:`.tls`), and starts ``ttfb`` when it
  hands the connection over; the fetch code stops ``ttfb`` when the response headers
  are in. An aiohttp ``TraceConfig`` gave the same marks but cost several awaited
  signal dispatches per request (about 5% of a probe's CPU, bench/probe_transports).
* httpx/httpcore: the ``trace`` request extension (connect, tls, ttfb).

Fresh connection per probe is the default, as blackbox_exporter does: a keep-alive
pool would hide connect and TLS costs and keep probing a backend that the load
balancer already took out of rotation.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

import aiohappyeyeballs
import aiohttp
import httpx
from aiohttp.abc import ResolveResult
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.helpers import is_ip_address
from httpx_aiohttp import AiohttpTransport
from multidict import CIMultiDict

from opsq.engines.probe.phases import current
from opsq.engines.probe.tls import chain_not_after

TransportName = Literal["aiohttp", "httpx"]
HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305 section 5 recommends 250 ms
TraceHook = Callable[[str, dict[str, Any]], Awaitable[None]]


class TimedConnector(aiohttp.TCPConnector):
    """A TCPConnector that times TCP connect and TLS handshake separately.

    It overrides aiohttp's connection and resolver hooks (private methods, stable
    since 3.9) and falls back to the stock path whenever no probe clock is active.
    """

    async def connect(
        self, req: ClientRequest, traces: list[Any], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        clock = current()
        if clock is not None:
            clock.start("ttfb")  # the request is written next; stopped at its headers
        return connection

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Any] | None = None
    ) -> list[ResolveResult]:
        clock = current()
        if clock is None or is_ip_address(host) or self._dns_cached(host, port):
            return await super()._resolve_host(host, port, traces)
        clock.start("dns")
        addresses = await super()._resolve_host(host, port, traces)
        clock.stop("dns")
        return addresses

    def _dns_cached(self, host: str, port: int) -> bool:
        """A lookup aiohttp answers from its cache (reused connections) is no dns phase."""
        key = (host, port)
        return (
            self.use_dns_cache and key in self._cached_hosts and not self._cached_hosts.expired(key)
        )

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: list[Any],
        req: ClientRequest,
        timeout: aiohttp.ClientTimeout,
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, Any]:
        clock = current()
        if clock is None:
            return await super()._wrap_create_connection(
                *args, addr_infos=addr_infos, req=req, timeout=timeout,
                client_error=client_error, **kwargs,
            )  # fmt: skip
        clock.start("connect")
        sock = await self._open_socket(addr_infos, req, timeout, client_error)
        clock.stop("connect")
        if not kwargs.get("ssl"):
            kwargs.pop("server_hostname", None)
        else:
            clock.start("tls")
        try:
            transport, proto = await self._wrap_existing_connection(
                *args, sock=sock, req=req, timeout=timeout, client_error=client_error, **kwargs
            )
        except BaseException:
            sock.close()
            raise
        if kwargs.get("ssl"):
            clock.stop("tls")
            clock.cert_expires_at = chain_not_after(transport)
        return transport, proto

    async def _open_socket(
        self,
        addr_infos: list[Any],
        req: ClientRequest,
        timeout: aiohttp.ClientTimeout,
        client_error: type[Exception],
    ) -> socket.socket:
        try:
            async with asyncio.timeout(timeout.sock_connect):
                return await aiohappyeyeballs.start_connection(
                    addr_infos=addr_infos,
                    local_addr_infos=self._local_addr_infos,
                    happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
                    loop=asyncio.get_running_loop(),
                )
        except OSError as exc:
            if isinstance(exc, TimeoutError) and exc.errno is None:
                raise
            raise client_error(req.connection_key, exc) from exc


_HTTPCORE_EVENTS = {
    "connection.connect_tcp.started": ("start", "connect"),
    "connection.connect_tcp.complete": ("stop", "connect"),
    "connection.start_tls.started": ("start", "tls"),
    "connection.start_tls.complete": ("stop", "tls"),
    "http11.send_request_headers.started": ("start", "ttfb"),
    "http11.receive_response_headers.complete": ("stop", "ttfb"),
}


async def httpcore_trace(event: str, info: dict[str, Any]) -> None:
    """httpcore's ``trace`` extension hook: feeds the current attempt's clock."""
    clock = current()
    step = _HTTPCORE_EVENTS.get(event)
    if clock is None or step is None:
        return
    getattr(clock, step[0])(step[1])
    if event == "connection.start_tls.complete":
        stream = info.get("return_value")
        if stream is not None:
            clock.cert_expires_at = chain_not_after(stream)


class DirectAiohttpTransport(AiohttpTransport):
    """httpx-aiohttp's transport plus :meth:`direct`, its request without httpx models.

    ``handle_async_request`` turns an ``httpx.Request`` into an aiohttp call and the
    aiohttp response back into an ``httpx.Response``: the URL is parsed twice, headers
    copied three times, and the body streamed through two adapters, about a third of
    the engine's CPU per probe on a small response (measured with the probe
    benchmarks). :meth:`direct` makes the same aiohttp call with the same options
    (no redirects, no decompression, the same timeouts) for the fetch code's plain
    case; errors are mapped to httpx's exceptions the same way by the caller.
    """

    def __init__(self, session: aiohttp.ClientSession) -> None:
        super().__init__(client=session)
        self.session = session

    def direct(
        self, method: str, url: str, headers: CIMultiDict[str]
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """The request without aiohttp timers: the engine runs every attempt under
        ``asyncio.timeout`` of what is left of the probe's deadline, which is what the
        general path's aiohttp timeouts are set to (they would fire at the same moment,
        with the same ``timeout`` verdict). Skipping them saves a timer per request
        and a timer reschedule per chunk read."""
        return self.session.request(
            method,
            url,
            headers=headers,
            allow_redirects=False,
            auto_decompress=False,
            compress=False,
        )


def build_transport(
    transport: TransportName,
    *,
    tls: ssl.SSLContext,
    reuse: bool,
    source_address: str | None = None,
) -> httpx.AsyncBaseTransport:
    """An httpx transport for one TLS context and reuse setting; call inside a running
    loop. ``source_address`` binds outgoing sockets to that local address."""
    if transport == "aiohttp":
        connector = TimedConnector(
            ssl=tls,
            force_close=not reuse,
            limit=0,
            use_dns_cache=reuse,
            local_addr=(source_address, 0) if source_address else None,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            # Probes are independent: one target's Set-Cookie must not reach the next.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,  # httpx decodes content-encoding itself
            # No session-wide limits (aiohttp's default is 5 minutes): the general path
            # passes its timeouts per request, the direct one relies on the deadline.
            timeout=aiohttp.ClientTimeout(),
        )
        return DirectAiohttpTransport(session)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None if reuse else 0)
    return httpx.AsyncHTTPTransport(
        verify=tls, limits=limits, trust_env=False, local_address=source_address
    )
