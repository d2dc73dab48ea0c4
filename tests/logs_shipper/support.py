"""Helpers for the shipper tests: make stream entries, read the file sink, run `opsq ship`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from opsq.core import keys
from opsq.core.logformat import Entry, record_id
from opsq.core.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
STREAM = keys.LOG_STREAM
GROUP = keys.LOG_GROUP
FID = "2049:131:9f2c"


def make_entry(n: int, lines: int = 5, fid: str = FID, path: str = "/var/log/app.log") -> Entry:
    """Entry number *n* of a file: *lines* records at deterministic offsets."""
    start = n * lines * 100
    records = tuple((start + j * 100, f"entry {n} line {j}".encode()) for j in range(lines))
    return Entry("node1", path, fid, start, start + lines * 100, records)


def ids_of(entries: Iterable[Entry]) -> set[str]:
    return {record_id(e.fid, off) for e in entries for off, _ in e.records}


def produce(client: redis.Redis, entries: Iterable[Entry], stream: str = STREAM) -> list[str]:
    pipe = client.pipeline(transaction=True)  # one MULTI: a blocked reader sees all at once
    for entry in entries:
        pipe.xadd(stream, entry.encode())
    return [i.decode() if isinstance(i, bytes) else i for i in pipe.execute()]


def sink_docs(directory: Path, pattern: str = "*.jsonl*") -> list[dict[str, Any]]:
    """Every parseable JSON line in the sink files (a torn line from a kill -9 is skipped)."""
    docs = []
    for path in sorted(directory.glob(pattern)):
        for line in path.read_bytes().splitlines():
            try:
                docs.append(json.loads(line))
            except ValueError:
                continue
    return docs


def sink_ids(directory: Path, pattern: str = "*.jsonl*") -> Counter[str]:
    return Counter(d["id"] for d in sink_docs(directory, pattern))


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll until *condition* holds; fail the test with *what* if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


def pending_of(client: redis.Redis, consumer: str, stream: str = STREAM) -> int:
    for row in client.xinfo_consumers(stream, GROUP):
        name = row["name"].decode() if isinstance(row["name"], bytes) else row["name"]
        if name == consumer:
            return int(row["pending"])
    return 0


class ShipperProc:
    """One `opsq ship` subprocess with its own config file, sink file and metrics port."""

    def __init__(self, redis_url: str, workdir: Path, consumer: str, **shipper: Any) -> None:
        self.consumer = consumer
        self.port = free_port()
        self.sink_path = workdir / f"sink-{consumer}.jsonl"
        conf = {
            "logs": {
                "stream": STREAM,
                "shipper": {
                    "group": GROUP, "batch": 10, "block": 0.2, "claim_idle": 30,
                    "trim_interval": 1, "metrics_port": self.port,
                    "sink": {"type": "file", "path": str(self.sink_path)},
                    **shipper,
                },
            }
        }  # fmt: skip
        self.config = workdir / f"ship-{consumer}.yaml"
        self.config.write_text(yaml.safe_dump(conf))
        self.log = workdir / f"ship-{consumer}.log"
        self.redis_url = redis_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ShipperProc:
        argv = [str(Path(sys.executable).with_name("opsq")), "ship", "--config", str(self.config),
                "--redis-url", self.redis_url, "--consumer", self.consumer]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "OPSQ_METRICS__BIND": "127.0.0.1"},
            )  # fmt: skip
        wait_for(self.ready, 30, f"{self.consumer} ready ({self.log.read_text()[-2000:]})")
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"opsq ship exited: {self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
