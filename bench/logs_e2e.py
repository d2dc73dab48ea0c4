"""Log shipping end to end: file -> ``opsq agent`` -> Redis stream -> ``opsq ship`` -> file.

(a) Throughput: a 1,000,000-line file (~115 MB) is tailed by ``opsq agent`` into a
    private valkey-server and shipped by ``opsq ship`` to the JSON-lines file sink;
    timed from starting both until the sink holds every record (target >= 150k lines/s).
    Peers measured in the same run on the same file: rsyslog ``imfile`` -> ``omfile``
    (a tailer writing straight to a local file, no broker in between) and ``cat``
    (the raw copy ceiling of this disk).
(b) Append-to-sink latency at a steady 10k lines/s for ~20 s: a writer appends lines that
    carry their write time; a reader follows the sink file and takes, for every record,
    (time seen in the sink) - (time written). Also reported: the shipper's own
    ``opsq_shipper_sink_append_seconds`` histogram (XADD accepted -> sink fsynced).

Run: ``python -m bench logs_e2e`` (``LOGS_E2E_LINES`` and ``LOGS_E2E_SECONDS`` shrink it).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
import yaml

from opsq.core.logformat import Entry
from opsq.core.redis_server import RedisServer, free_port

LINES = int(os.environ.get("LOGS_E2E_LINES", "1000000"))
LATENCY_SECONDS = float(os.environ.get("LOGS_E2E_SECONDS", "20"))
REPEAT = int(os.environ.get("LOGS_E2E_REPEAT", "3"))
"""(a) runs each contender this many times, interleaved, and reports the median: the
machine is shared, so single runs swing by 2x."""
RATE = 10_000
LINE_BYTES = 115
OPSQ = str(Path(sys.executable).with_name("opsq"))


def make_log(path: Path, lines: int) -> None:
    """*lines* syslog-like lines of LINE_BYTES bytes each (newline included)."""
    with path.open("wb", buffering=1 << 20) as fh:
        for i in range(lines):
            head = f"2026-11-27T02:00:00.{i % 1000000:06d}Z web-7 app[4242]: INFO req={i:09d} "
            fh.write((head + "x" * (LINE_BYTES - 1 - len(head)) + "\n").encode())


class LineCounter:
    """Counts newlines appended to a file, reading only what is new each time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.lines = 0

    def poll(self) -> int:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.pos)
                chunk = fh.read()
        except FileNotFoundError:
            return self.lines
        self.pos += len(chunk)
        self.lines += chunk.count(b"\n")
        return self.lines


def wait_until(done: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    start = time.perf_counter()
    while not done():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(step)
    return time.perf_counter()


class Pipeline:
    """A private valkey-server plus `opsq ship` (file sink) and `opsq agent` on *paths*."""

    def __init__(self, work: Path, paths: list[str], *, read_from: str = "head") -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(work / "redis", appendonly=True)
        self.sink = work / "sink.jsonl"
        self.ship_port = free_port()
        conf = {
            "logs": {
                "stream": "bench:logs",
                "agent": {
                    "paths": paths, "checkpoint_dir": str(work / "ckpt"),
                    "read_from": read_from, "metrics_port": free_port(),
                },
                "shipper": {
                    "group": "shippers", "consumer": "bench", "metrics_port": self.ship_port,
                    "sink": {"type": "file", "path": str(self.sink), "max_bytes": 1 << 40},
                },
            }
        }  # fmt: skip
        self.config = work / "opsq.yaml"
        self.config.write_text(yaml.safe_dump(conf))
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_redis(self) -> None:
        self.redis.start()

    def start(self, command: str) -> None:
        argv = [OPSQ, command, "--config", str(self.config), "--redis-url", self.redis.url]
        with (self.work / f"{command}.log").open("ab") as log:
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.ship_port}/metrics", timeout=5).text

    def ship_ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.ship_port}/readyz"
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.redis.stop()


# --- (a) throughput ---------------------------------------------------------------------


def opsq_e2e(work: Path, source: Path) -> tuple[float, float, int, int]:
    """Seconds until the sink holds every line and until the agent had XADDed them all;
    also (lines in sink, distinct record ids)."""
    pipe = Pipeline(work, [str(source)])
    pipe.start_redis()
    counter = LineCounter(pipe.sink)
    size = source.stat().st_size
    client = redis.Redis.from_url(pipe.redis.url)
    agent_done: list[float] = []

    def done() -> bool:
        if not agent_done:
            last = client.xrevrange("bench:logs", count=1)
            if last and int(last[0][1][b"end"]) >= size:
                agent_done.append(time.perf_counter())
        return counter.poll() >= LINES

    try:
        start = time.perf_counter()
        pipe.start("ship")
        pipe.start("agent")
        end = wait_until(done, timeout=900, step=0.02)
    finally:
        client.close()
        pipe.stop()
    ids = set()
    with pipe.sink.open("rb") as fh:
        for line in fh:
            ids.add(json.loads(line)["id"])
    agent_s = (agent_done[0] if agent_done else end) - start
    return end - start, agent_s, counter.lines, len(ids)


def ship_only(work: Path, source: Path) -> float:
    """Seconds for `opsq ship` alone to move a pre-filled stream (entries of 2,000 lines,
    as the agent makes them) into the file sink: the shipper's own ceiling."""
    pipe = Pipeline(work, [])
    pipe.start_redis()
    client = redis.Redis.from_url(pipe.redis.url)
    fill_stream(client, source)
    client.close()
    counter = LineCounter(pipe.sink)
    try:
        start = time.perf_counter()
        pipe.start("ship")
        end = wait_until(lambda: counter.poll() >= LINES, timeout=900, step=0.02)
    finally:
        pipe.stop()
    return end - start


def fill_stream(client: redis.Redis, source: Path) -> None:
    pipe = client.pipeline(transaction=False)
    records: list[tuple[int, bytes]] = []
    offset = 0
    with source.open("rb") as fh:
        for line in fh:
            records.append((offset, line[:-1]))
            offset += len(line)
            if len(records) == 2000:
                pipe.xadd("bench:logs", _entry(source, records, offset))
                records = []
    if records:
        pipe.xadd("bench:logs", _entry(source, records, offset))
    pipe.execute()


def _entry(source: Path, records: list[tuple[int, bytes]], end: int) -> dict[bytes, bytes]:
    fields = Entry("bench", str(source), "0:0:bench", records[0][0], end, tuple(records))
    return fields.encode()


RSYSLOG_CONF = """
global(workDirectory="{work}")
module(load="imfile" mode="inotify")
template(name="raw" type="string" string="%msg%\\n")
input(type="imfile" file="{source}" tag="bench" ruleset="copy")
ruleset(name="copy") {{
  action(type="omfile" file="{out}" template="raw" asyncWriting="on" ioBufferSize="1m"
         flushOnTXEnd="on")
}}
"""


def rsyslog_file(work: Path, source: Path) -> float | None:
    """Seconds for rsyslog imfile -> omfile to copy every line, or None without rsyslogd."""
    binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not os.access(binary, os.X_OK):
        return None
    work.mkdir(parents=True, exist_ok=True)
    out = work / "rsyslog-out.log"
    conf = work / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(work=work, source=source, out=out))
    counter = LineCounter(out)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [binary, "-n", "-f", str(conf), "-i", str(work / "rsyslog.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        end = wait_until(lambda: counter.poll() >= LINES, timeout=900, step=0.05)
    finally:
        proc.terminate()
        proc.wait(20)
    return end - start


def cat_copy(work: Path, source: Path) -> float:
    out = work / "cat-out.log"
    start = time.perf_counter()
    with out.open("wb") as fh:
        subprocess.run(["cat", str(source)], stdout=fh, check=True)
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - start


# --- (b) latency ------------------------------------------------------------------------


def write_steadily(path: Path, seconds: float, stop: threading.Event) -> int:
    """Append RATE lines/s in 10 ms slices; each line starts with its write time (ns)."""
    per_slice = RATE // 100
    written = 0
    begin = time.perf_counter()
    with path.open("ab", buffering=0) as fh:
        while time.perf_counter() - begin < seconds and not stop.is_set():
            now = time.time_ns()
            chunk = b"".join(
                f"{now} seq={written + k:09d} steady load line padding".encode().ljust(110, b".")
                + b"\n"
                for k in range(per_slice)
            )
            fh.write(chunk)
            written += per_slice
            due = begin + written / RATE
            time.sleep(max(0.0, due - time.perf_counter()))
    return written


def follow_sink(path: Path, expected: Callable[[], int | None], out: list[float]) -> None:
    """Record (seen - written) for every record until *expected* records were seen."""
    pos, rest = 0, b""
    deadline = time.monotonic() + LATENCY_SECONDS + 120
    while time.monotonic() < deadline:
        target = expected()
        if target is not None and len(out) >= target:
            return
        try:
            with path.open("rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
        except FileNotFoundError:
            chunk = b""
        seen = time.time_ns()
        pos += len(chunk)
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            written = int(json.loads(line)["line"].split(" ", 1)[0])
            out.append((seen - written) / 1e9)
        time.sleep(0.01)


def histogram_quantile(metrics: str, name: str, q: float) -> float:
    """Prometheus-style quantile (linear within the bucket) from a histogram's buckets."""
    buckets = []
    for line in metrics.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    buckets.sort()
    total = buckets[-1][1]
    rank, prev_le, prev_count = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1)
        prev_le, prev_count = le, count
    return prev_le


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(work: Path) -> tuple[int, int, list[float], str]:
    work.mkdir(parents=True, exist_ok=True)
    source = work / "steady.log"
    source.touch()
    pipe = Pipeline(work, [str(source)])
    pipe.start_redis()
    seen: list[float] = []
    written: list[int] = []
    stop = threading.Event()
    try:
        pipe.start("ship")
        pipe.start("agent")
        wait_until(pipe.ship_ready, timeout=60)
        time.sleep(2)  # let the agent pick the file up before the clock starts
        reader = threading.Thread(
            target=follow_sink, args=(pipe.sink, lambda: written[0] if written else None, seen)
        )
        reader.start()
        written.append(write_steadily(source, LATENCY_SECONDS, stop))
        reader.join()
        metrics = pipe.metrics()
    finally:
        stop.set()
        pipe.stop()
    return written[0], len(seen), seen, metrics


# --- report -----------------------------------------------------------------------------


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="opsq-bench-logs-") as tmp:
        work = Path(tmp)
        source = work / "input.log"
        make_log(source, LINES)
        size_mb = source.stat().st_size / 1e6
        print(f"input: {LINES:,} lines, {size_mb:.0f} MB", flush=True)

        runs: dict[str, list[float]] = {"opsq": [], "ship": [], "rsyslog": [], "cat": []}
        agent_runs: list[float] = []
        checks: list[tuple[int, int]] = []
        for n in range(REPEAT):
            opsq_s, agent_s, sink_lines, distinct = opsq_e2e(work / f"opsq-{n}", source)
            runs["opsq"].append(LINES / opsq_s)
            agent_runs.append(agent_s)
            checks.append((sink_lines, distinct))
            runs["ship"].append(LINES / ship_only(work / f"ship-{n}", source))
            rsyslog_s = rsyslog_file(work / f"rsyslog-{n}", source)
            if rsyslog_s is not None:
                runs["rsyslog"].append(LINES / rsyslog_s)
            runs["cat"].append(LINES / cat_copy(work, source))
        sent, got, lat, metrics = latency(work / "latency")

    labels = {
        "opsq": "opsq agent -> valkey stream -> opsq ship -> file sink",
        "ship": "opsq ship alone: pre-filled stream -> file sink",
        "rsyslog": "rsyslog imfile -> omfile (no broker)",
        "cat": "cat file > file (raw copy ceiling)",
    }
    opsq_rate = statistics.median(runs["opsq"])
    head = f"(a) {LINES:,} lines file -> sink, median of {REPEAT}"
    print(f"\n| {head} | lines/s | range | opsq ratio |")
    print("|---|---|---|---|")
    for key, rates in runs.items():
        if rates:
            mid = statistics.median(rates)
            print(f"| {labels[key]} | {mid:,.0f} | {min(rates):,.0f} - {max(rates):,.0f} | "
                  f"{opsq_rate / mid:.2f}x |")  # fmt: skip
    print(f"\nthe agent had XADDed the last line after {statistics.median(agent_runs):.2f} s "
          f"(median; includes starting the processes)")  # fmt: skip
    verdict = "met" if opsq_rate >= 150_000 else "NOT met"
    print(f"sink lines / distinct record ids per run: {checks} "
          f"(target >= 150,000 lines/s: {verdict})")  # fmt: skip

    name = "opsq_shipper_sink_append_seconds"
    print(f"\n| (b) {RATE:,} lines/s for {LATENCY_SECONDS:.0f} s | p50 | p99 | max |")
    print("|---|---|---|---|")
    if lat:
        print(f"| line written -> seen in sink file | {quantile(lat, 0.5) * 1000:.0f} ms | "
              f"{quantile(lat, 0.99) * 1000:.0f} ms | {max(lat) * 1000:.0f} ms |")  # fmt: skip
    p50 = histogram_quantile(metrics, name, 0.5)
    p99 = histogram_quantile(metrics, name, 0.99)
    print(f"| shipper histogram: XADD accepted -> sink fsync | {p50 * 1000:.0f} ms | "
          f"{p99 * 1000:.0f} ms | |")  # fmt: skip
    print(f"\nlines written {sent:,}, records seen in sink {got:,}; target p99 <= 1 s: "
          f"{'met' if lat and quantile(lat, 0.99) <= 1.0 else 'NOT met'}")  # fmt: skip
    ok = all(distinct == LINES for _, distinct in checks) and got >= sent
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
