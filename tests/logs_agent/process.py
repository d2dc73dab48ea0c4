"""``opsq agent`` as a real subprocess (for kill -9, SIGTERM, RSS and privilege tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from opsq.core.redis_server import free_port

OPSQ = str(Path(sys.executable).with_name("opsq"))


class AgentProcess:
    def __init__(
        self,
        tmp_path: Path,
        redis_url: str,
        agent: dict[str, Any],
        *,
        stream: str,
        prefix: list[str] | None = None,
        name: str = "agent",
    ) -> None:
        self.port = free_port()
        self.config = tmp_path / f"{name}.yaml"
        doc = {"logs": {"stream": stream, "agent": {**agent, "metrics_port": self.port}}}
        self.config.write_text(yaml.safe_dump(doc))
        self.redis_url = redis_url
        self.prefix = prefix or []
        self.log_file = tmp_path / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        argv = [*self.prefix, OPSQ, "agent", "--config", str(self.config),
                "--redis-url", self.redis_url, "--log-level", "DEBUG"]  # fmt: skip
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self._wait_http()
        return self

    def _wait_http(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited early: {self.log_file.read_text()[-3000:]}")
            try:
                self.get("/healthz")
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("agent metrics endpoint never came up")

    def get(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.get("/metrics").splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def vm_hwm_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
