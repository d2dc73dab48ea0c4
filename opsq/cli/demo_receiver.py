"""The webhook receiver of ``opsq up --demo``: prints every notification it gets.

It runs as a thread inside ``opsq up`` (not as a child) so its lines appear in the
terminal next to the banner: the demo's ``toggle`` target goes down and comes back
every ``DEMO_TOGGLE_PERIOD_S``, and the user sees the alert fire and resolve, with the
JSON a real receiver would get (``opsq.engines.alerts.notifiers.webhook_body``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class DemoReceiver:
    """``POST /hook`` -> one line per notification through *echo*."""

    def __init__(self, echo: Callable[[str], None], port: int = 0) -> None:
        self.echo = echo
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="demo-receiver",
                                        daemon=True)  # fmt: skip

    def start(self) -> DemoReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def describe(self, body: dict[str, Any]) -> str:
        transition = body.get("transition") or {}
        return (f"demo receiver got {body.get('event')}: {body.get('title')} "
                f"(key {body.get('key')}, reason {transition.get('reason')!r})")  # fmt: skip

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    receiver.echo(receiver.describe(json.loads(raw)))
                except (ValueError, AttributeError):
                    receiver.echo(f"demo receiver got a body that is not JSON: {raw[:200]!r}")
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler
