"""The small HTTP server every long-running opsq process exposes.

- ``/metrics``: Prometheus text format (multiprocess-aware).
- ``/healthz``: liveness. Cheap and local: the process is serving, nothing else. A
  liveness probe that checks Redis would restart every pod during a Redis blip.
- ``/readyz``: readiness. Runs the process's checks (Redis reachable, informer cache
  synced, ...); 503 with the failing check names otherwise. *Reports* (Redis memory)
  are added to the body as they are, without deciding the status.
- ``/debug/stacks``, ``/debug/tasks``, ``/debug/tracemalloc``: the Python counterpart
  of Go's pprof. Only served when the server is bound to loopback, unless the operator
  explicitly allows it, because stacks can show arguments.

A ``ThreadingHTTPServer`` in a daemon thread: no event loop to share, no framework.

A process that cannot bind its port fails at start (:func:`bind_or_fail`) instead of
running without ``/metrics`` and ``/readyz``: nothing would scrape it, its readiness
probe would fail for a reason nobody sees, and the only trace was one ERROR line.
Port 0 picks a free port, and the process logs the one it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import sys
import threading
import traceback
import tracemalloc
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from opsq.core.errors import ConfigError
from opsq.core.metrics import collector_registry

Check = Callable[[], bool]
Report = Callable[[], dict[str, Any]]


def thread_stacks() -> str:
    frames = sys._current_frames()
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in frames.items():
        out.append(f"--- thread {names.get(ident, '?')} ({ident})")
        out.extend(line.rstrip() for line in traceback.format_stack(frame))
    return "\n".join(out) + "\n"


def asyncio_tasks(loops: list[asyncio.AbstractEventLoop]) -> str:
    out = []
    for loop in loops:
        with contextlib.suppress(RuntimeError):
            for task in asyncio.all_tasks(loop):
                out.append(f"--- {task.get_name()} {task.get_coro()!r}")
                out.extend(str(f) for f in task.get_stack(limit=10))
    return "\n".join(out) + "\n"


def top_allocations(limit: int = 25) -> str:
    """Start tracemalloc on first call (on demand: it costs memory), then report."""
    if not tracemalloc.is_tracing():
        tracemalloc.start(10)
        return "tracemalloc started; request again to see the top allocations\n"
    stats = tracemalloc.take_snapshot().statistics("lineno")[:limit]
    return "\n".join(str(s) for s in stats) + "\n"


class ObserveServer:
    """Serve metrics, health and diagnostics on *bind*:*port* (port 0 picks one)."""

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = 0,
        *,
        ready_checks: dict[str, Check] | None = None,
        reports: dict[str, Report] | None = None,
        allow_remote_debug: bool = False,
    ) -> None:
        self.ready_checks = dict(ready_checks or {})
        self.reports = dict(reports or {})
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.debug_enabled = allow_remote_debug or _is_loopback(bind)
        self._httpd = ThreadingHTTPServer((bind, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> ObserveServer:
        # A short poll: stop() waits for the loop's next look, which counts against the
        # caller's shutdown grace (the default 0.5 s was a sixth of a 3 s grace).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="opsq-observe", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
        self._httpd.server_close()

    def forget(self) -> None:
        """In a forked child: close the inherited listening socket (the parent serves)."""
        self._httpd.socket.close()

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        results: dict[str, bool] = {}
        for name, check in self.ready_checks.items():
            try:
                results[name] = bool(check())
            except Exception:
                results[name] = False
        return all(results.values()), results


def bind_or_fail(
    bind: str,
    port: int,
    *,
    process: str,
    setting: str = "metrics.port",
    ready_checks: dict[str, Check] | None = None,
    reports: dict[str, Report] | None = None,
) -> ObserveServer:
    """An :class:`ObserveServer` bound now (not yet serving), or a ConfigError with the fix
    naming *setting* (the dotted config key of the port) and its environment variable."""
    try:
        return ObserveServer(bind, port, ready_checks=ready_checks, reports=reports)
    except OSError as exc:
        env = "OPSQ_" + setting.upper().replace(".", "__")
        raise ConfigError(
            f"{process}: cannot serve /metrics, /healthz and /readyz on {bind}:{port}: "
            f"{exc.strerror or exc} (fix: set {setting}, {env}, to a free "
            "port, or 0 to pick one; the port chosen is logged)"
        ) from exc


def _is_loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"


def _handler_for(server: ObserveServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            route = _ROUTES.get(path)
            if route is None or (path.startswith("/debug/") and not server.debug_enabled):
                self._send(404, "text/plain", b"not found\n")
                return
            status, ctype, body = route(server)
            self._send(status, ctype, body)

        def _send(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes every few seconds would drown the real logs

    return Handler


def _metrics(_: ObserveServer) -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, generate_latest(collector_registry())


def _healthz(_: ObserveServer) -> tuple[int, str, bytes]:
    return 200, "text/plain", b"ok\n"


def _readyz(server: ObserveServer) -> tuple[int, str, bytes]:
    ok, results = server.readiness()
    body: dict[str, Any] = dict(results)
    for name, report in server.reports.items():
        try:
            body[name] = report()
        except Exception as exc:  # a report must never break readiness
            body[name] = {"error": type(exc).__name__}
    return (200 if ok else 503), "application/json", json.dumps(body).encode() + b"\n"


def _text(render: Callable[[ObserveServer], str]) -> Callable[[ObserveServer], Any]:
    return lambda s: (200, "text/plain; charset=utf-8", render(s).encode())


_ROUTES: dict[str, Callable[[ObserveServer], tuple[int, str, bytes]]] = {
    "/metrics": _metrics,
    "/healthz": _healthz,
    "/readyz": _readyz,
    "/debug/stacks": _text(lambda s: thread_stacks()),
    "/debug/tasks": _text(lambda s: asyncio_tasks(s.loops)),
    "/debug/tracemalloc": _text(lambda s: top_allocations()),
}
