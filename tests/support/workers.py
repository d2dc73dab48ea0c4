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
        """Kill the whole worker (main process and pool) without warning; return once
        every process of it is dead.

        Reaping the main process is not enough: on a loaded machine a pool process can
        still be running (state R, SIGKILL pending) a few ms later, its sockets open. A
        test that then lets a held receiver answer would see its 2xx "accepted" by a
        process that never reads it (the duplicate notification seen in issue 12).
        """
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            wait_until_group_dead(self.proc.pid)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()


def wait_until_group_dead(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no process of process group *pgid* is alive (zombies have closed
    their files, so they count as dead)."""
    deadline = time.monotonic() + timeout
    while (alive := _group_alive(pgid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    if alive:
        raise RuntimeError(f"processes {alive} of group {pgid} survived SIGKILL for {timeout}s")


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            alive.append(int(entry.name))
    return alive


def queue_length(redis_url: str, queue: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.llen(queue))
    finally:
        client.close()
