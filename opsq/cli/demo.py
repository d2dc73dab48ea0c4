"""Local endpoints for ``opsq up --demo``: healthy, slow, flaky and failing.

A newcomer without network access must still see real probes do real work: an
up target, a latency failure, a 5xx that retries turn into a success, a hard
failure and a refused connection. The server runs as a supervised child process
(``python -m opsq.cli.demo --port P``) so it is stopped, and restarted, like
everything else ``opsq up`` starts.

:func:`render_targets` turns the targets file shipped in the package into one that
points at the running server.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
from pathlib import Path
from string import Template

from aiohttp import web

TEMPLATE = Path(__file__).with_name("demo_targets.yaml")
SLOW_S = 0.6
FLAKY_PERIOD = 3
"""/flaky succeeds once every FLAKY_PERIOD requests (503 otherwise)."""
TOGGLE_PERIOD_ENV = "OPSQ_DEMO_TOGGLE_PERIOD"
DEFAULT_TOGGLE_PERIOD_S = 30.0
"""/toggle is down for this long, then up for this long, and so on (the alert demo)."""


def render_targets(destination: Path, *, demo_address: str, closed_port: int) -> Path:
    """Write the demo targets file for a server at *demo_address* (``host:port``)."""
    text = Template(TEMPLATE.read_text()).substitute(demo=demo_address, closed=closed_port)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(text)
    return destination


def make_app() -> web.Application:
    counter = itertools.count(1)
    toggle_period = float(os.environ.get(TOGGLE_PERIOD_ENV, DEFAULT_TOGGLE_PERIOD_S))

    async def index(_: web.Request) -> web.Response:
        return web.Response(text="opsq demo: /healthy /slow /flaky /failing /toggle\n")

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_S)
        return web.Response(text="ok, slowly\n")

    async def flaky(_: web.Request) -> web.Response:
        if next(counter) % FLAKY_PERIOD:
            return web.Response(status=503, text="flaky: try again\n")
        return web.Response(text="ok this time\n")

    async def toggle(_: web.Request) -> web.Response:
        if int(time.time() // toggle_period) % 2 == 0:
            return web.Response(status=503, text="toggle: down for now\n")
        return web.Response(text="toggle: ok for now\n")

    async def failing(_: web.Request) -> web.Response:
        return web.Response(status=500, text="failing on purpose\n")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/healthy", healthy)
    app.router.add_get("/slow", slow)
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/failing", failing)
    app.router.add_get("/toggle", toggle)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="opsq demo endpoints")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # run_app handles SIGTERM/SIGINT with a graceful shutdown.
    web.run_app(make_app(), host=args.bind, port=args.port, print=None)


if __name__ == "__main__":
    main()
