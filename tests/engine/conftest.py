"""Local servers for the probe engine tests, started by the tests themselves.

One background thread runs an event loop hosting three aiohttp sites on free ports of
127.0.0.1: plain HTTP, HTTPS with a ``trustme`` certificate valid for a year, and HTTPS
with one that expires in three days. Tests are synchronous and drive the engine with
``asyncio.run`` in their own thread, exactly as a worker would; server-side counters
(hits per key, most requests in flight) let tests check what the server saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
from aiohttp import web

from opsq.core.config.probes import Target

HOLD_RELEASE_AT = 4  # /hold answers early once this many requests are in flight together


@dataclass
class ServerState:
    hits: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)
    max_in_flight: Counter[str] = field(default_factory=Counter)
    client_ports: dict[str, set[int]] = field(default_factory=dict)


def _app(state: ServerState) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/ok")
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="all ok", headers={"X-Probe": "yes-123"})

    @routes.route("*", "/hits/{key}/{code}")
    async def hits(request: web.Request) -> web.Response:
        state.hits[request.match_info["key"]] += 1
        return web.Response(status=int(request.match_info["code"]), text="counted")

    @routes.get("/flaky/{key}/{failures}")
    async def flaky(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        state.hits[key] += 1
        failing = state.hits[key] <= int(request.match_info["failures"])
        return web.Response(status=503 if failing else 200, text="flaky")

    @routes.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", "10")))
        return web.Response(text="slow")

    @routes.get("/hang-once/{key}")
    async def hang_once(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        state.hits[key] += 1
        if state.hits[key] == 1:
            await asyncio.sleep(60)  # the first request hangs; later ones answer at once
        return web.Response(text="answered")

    @routes.get("/loop")
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    @routes.get("/redirect")
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    @routes.post("/echo")
    async def echo(request: web.Request) -> web.Response:
        body = await request.text()
        return web.Response(text=f"{request.method} {request.headers.get('X-Token')} {body}")

    @routes.get("/headers")
    async def headers(request: web.Request) -> web.Response:
        seen = {k.lower(): v for k, v in request.headers.items()}
        return web.json_response(seen)

    @routes.get("/gzip")
    async def gzipped(request: web.Request) -> web.Response:
        response = web.Response(text="compressed hello " * 50)
        response.enable_compression(web.ContentCoding.gzip)
        return response

    @routes.get("/conn/{key}")
    async def conn(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        state.client_ports.setdefault(request.match_info["key"], set()).add(peer[1])
        return web.Response(text="seen")

    @routes.get("/peer")
    async def peer(request: web.Request) -> web.Response:
        return web.Response(text=str(request.remote))

    @routes.get("/drop")
    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()  # hang up without answering
        raise web.HTTPInternalServerError

    @routes.get("/hold/{key}")
    async def hold(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        state.in_flight[key] += 1
        state.max_in_flight[key] = max(state.max_in_flight[key], state.in_flight[key])
        try:
            for _ in range(30):  # up to 0.3 s, less once enough requests overlap
                if state.in_flight[key] >= HOLD_RELEASE_AT:
                    break
                await asyncio.sleep(0.01)
            return web.Response(text="held")
        finally:
            state.in_flight[key] -= 1

    app = web.Application()
    app.add_routes(routes)
    return app


@dataclass
class Servers:
    http: str
    https: str
    https_expiring: str
    http_port: int
    ca: trustme.CA
    state: ServerState

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts the test CA."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


def server_context(
    ca: trustme.CA, days: float, *, client_ca: trustme.CA | None = None
) -> ssl.SSLContext:
    """A server context whose leaf (from *ca*) expires in *days* (negative: expired);
    with *client_ca*, clients must present a certificate it issued (mTLS)."""
    now = dt.datetime.now(dt.UTC)
    leaf = ca.issue_cert(
        "127.0.0.1", "localhost", not_before=now - dt.timedelta(days=max(1, 1 - days)),
        not_after=now + dt.timedelta(days=days),
    )  # fmt: skip
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(ctx)
    return ctx


class _ServerThread(threading.Thread):
    """The test app on one site per SSL context (None: plain HTTP), each on a free port."""

    def __init__(self, state: ServerState, contexts: list[ssl.SSLContext | None]) -> None:
        super().__init__(daemon=True, name="probe-test-servers")
        self.state, self.contexts = state, contexts
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.ports: list[int] = []
        self.runner: web.AppRunner | None = None

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.runner = web.AppRunner(
            _app(self.state),
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=1,
            access_log=None,  # per-request access lines would only drown test output
        )
        await self.runner.setup()
        for ssl_ctx in self.contexts:
            site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
            await site.start()
            server: Any = site._server  # the only way aiohttp exposes the bound port
            self.ports.append(server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    state, ca = ServerState(), trustme.CA()
    with serving(state, [None, server_context(ca, 365), server_context(ca, 3)]) as ports:
        http_port, https_port, expiring_port = ports
        yield Servers(
            http=f"http://127.0.0.1:{http_port}",
            https=f"https://127.0.0.1:{https_port}",
            https_expiring=f"https://127.0.0.1:{expiring_port}",
            http_port=http_port,
            ca=ca,
            state=state,
        )


@contextlib.contextmanager
def serving(state: ServerState, contexts: list[ssl.SSLContext | None]) -> Iterator[list[int]]:
    """Serve the test app on one port per context (in a thread); yields the ports."""
    thread = _ServerThread(state, contexts)
    thread.start()
    assert thread.ready.wait(10), "test servers did not start"
    try:
        yield thread.ports
    finally:
        thread.stop()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def key() -> str:
    """A fresh key so server-side counters are private to the test."""
    return uuid.uuid4().hex[:12]


def target(url: str, **fields: Any) -> Target:
    """A validated Target with quick retry pacing unless the test says otherwise."""
    data: dict[str, Any] = {"name": "t", "url": url, "backoff_base": 0.01, "timeout": 5}
    data.update(fields)
    return Target.model_validate(data)
