"""Fixtures for the pipeline tests: a local HTTP server and targets-file helpers.

The server (a ``ThreadingHTTPServer`` in a daemon thread on a free port) answers
``/ok`` with 200, ``/fail`` with 503 and ``/slow?delay=S`` with 200 after S seconds,
and counts requests per path so tests can see what the workers actually did.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.support.workers import ROOT


class LocalHTTP:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                with server._lock:
                    server.hits[parts.path] += 1
                if parts.path == "/slow":
                    time.sleep(float(parse_qs(parts.query).get("delay", ["5"])[0]))
                code = 503 if parts.path == "/fail" else 200
                body = b"ok\n" if code == 200 else b"unavailable\n"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


@pytest.fixture
def http_server() -> Iterator[LocalHTTP]:
    server = LocalHTTP()
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def write_targets(path: Path, targets: list[dict[str, Any]], **defaults: Any) -> Path:
    doc: dict[str, Any] = {"targets": targets}
    if defaults:
        doc["defaults"] = defaults
    path.write_text(yaml.safe_dump(doc))
    return path


def run_cli(args: list[str], redis_url: str, env: dict[str, str] | None = None,
            timeout: float = 90) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """The real ``opsq`` console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-c", "from opsq.cli.main import main; raise SystemExit(main())", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "OPSQ_REDIS_URL": redis_url, **(env or {})},
    )  # fmt: skip
