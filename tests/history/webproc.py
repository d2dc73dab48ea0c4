"""``opsq web`` as a user starts it: a subprocess with the config in its environment."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from opsq.core.redis_server import free_port
from tests.deploy.util import wait_for


@dataclass
class WebProc:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    auth: tuple[str, str] | None = None

    def get(
        self, path: str, *, auth: tuple[str, str] | bool | None = True, method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body); *auth* True: this server's credentials."""
        request = urllib.request.Request(self.url + path, method=method)
        chosen = self.auth if auth is True else auth or None
        if chosen:
            token = base64.b64encode(f"{chosen[0]}:{chosen[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()
        except OSError:  # not listening yet
            return 0, {}, b""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_web(redis_url: str, tmp: Path, env: dict[str, str]) -> WebProc:
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("OPSQ_")}
    full.update({"OPSQ_REDIS_URL": redis_url, "OPSQ_WEB__PORT": str(port), **env})
    log = tmp / f"web-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "opsq", "web"], env=full, stdout=out, stderr=subprocess.STDOUT
        )
    web = WebProc(proc, f"http://127.0.0.1:{port}", log)
    if "OPSQ_WEB__PASSWORD" in env:
        web.auth = ("opsq", env["OPSQ_WEB__PASSWORD"])
    ready = wait_for(lambda: proc.poll() is not None or web.get("/healthz")[0] == 200, 30)
    if not ready or proc.poll() is not None:
        web.stop()
        raise AssertionError(f"opsq web did not start: {log.read_text()}")
    return web
