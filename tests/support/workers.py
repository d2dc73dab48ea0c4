"""Run real ``celery -A tasks worker`` processes against the test Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    """One ``celery -A tasks worker`` process (prefork) with its own log file."""

    def __init__(
        self,
        redis_url: str,
        log_dir: Path,
        *,
        name: str = "w1",
        concurrency: int = 2,
        queues: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"worker-{name}.log"
        argv = [
            sys.executable, "-m", "celery", "-A", "tasks", "worker",
            "--loglevel", "INFO", "--pool", "prefork",
            "--concurrency", str(concurrency), "--hostname", f"{name}@%h",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        if queues:
            argv += ["-Q", queues]
        self.env = {
            **os.environ,
            "OPSQ_REDIS_URL": redis_url,
            "OPSQ_DATA_DIR": str(log_dir / f"data-{name}"),
            "OPSQ_METRICS__PORT": "0",
            **(env or {}),
        }
        self.argv = argv
        self.redis_url = redis_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Worker:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if " ready." in self.log():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def child_pids(self) -> list[int]:
        """PIDs of the prefork pool processes."""
        assert self.proc is not None
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return [int(p) for p in out.stdout.split()]

    def kill9(self) -> None:
        """Kill the whole worker (main process and pool) without warning."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()


def queue_length(redis_url: str, queue: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.llen(queue))
    finally:
        client.close()
