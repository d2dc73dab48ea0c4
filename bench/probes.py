"""Probe pipeline throughput: opsq end to end vs in-process vs blackbox_exporter vs curl.

One run, one local nginx (the config of :mod:`bench.probe_transports`), N distinct
target URLs (default 10,000), a fresh connection per probe everywhere:

a. **opsq end to end**: a private valkey-server, a real
   ``celery -A tasks worker --concurrency 2``, the producer enqueues the batches and
   the clock stops when the aggregated summary is stored.
b. **opsq engine in-process**: :func:`opsq.engines.probe.run_probes` on the same
   targets in this process (no Celery, no Redis).
c. **blackbox_exporter** driven by ``hey -c 64``: N requests to
   ``/probe?target=...&module=http_2xx`` (every probe its own connection to nginx).
d. **serial curl loop** on a 300-target sample (what the cron'd script did).

Prints probes/s, then end-to-end / blackbox (target >= 1.5) and Celery path /
in-process (target >= 0.8). Missing tools (nginx-light, hey,
prometheus-blackbox-exporter, curl) are installed with apt-get.

    python -m bench probes
    OPSQ_BENCH_PROBES_N=2000 python -m bench probes     # quicker
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.probe_transports import bench_targets, local_server
from opsq.core.redis_server import RedisServer, free_port
from opsq.core.settings import load_settings
from opsq.engines.probe import run_probes
from producers.probes import ProbeProducer

N = int(os.environ.get("OPSQ_BENCH_PROBES_N", "10000"))
CURL_SAMPLE = 300
ROUNDS = int(os.environ.get("OPSQ_BENCH_ROUNDS", "3"))
"""Best of interleaved rounds: the machine is shared, so single runs are noisy."""
E2E = "opsq end to end (Celery, 2 worker processes)"
IN_PROCESS = "opsq engine in-process (no Celery)"
BLACKBOX = "blackbox_exporter driven by hey"
CURL = f"serial curl loop ({CURL_SAMPLE} targets)"
HEY_CONCURRENCY = 64
ROOT = Path(__file__).resolve().parents[1]

# The tuned pipeline settings (see the README's probes section for the measurements).
PIPELINE_ENV = {
    "OPSQ_PROBES__BATCH_SIZE": os.environ.get("OPSQ_BENCH_BATCH_SIZE", "500"),
    "OPSQ_PROBES__CONCURRENCY": os.environ.get("OPSQ_BENCH_CONCURRENCY", "128"),
    # One host serves every target here; the per-host cap would otherwise be the limit.
    "OPSQ_PROBES__PER_HOST_CONCURRENCY": os.environ.get("OPSQ_BENCH_CONCURRENCY", "128"),
}
APT_PACKAGES = {
    "nginx": "nginx-light",
    "hey": "hey",
    "prometheus-blackbox-exporter": "prometheus-blackbox-exporter",
    "curl": "curl",
}
BLACKBOX_CONFIG = """
modules:
  http_2xx:
    prober: http
    timeout: 10s
    http:
      preferred_ip_protocol: ip4
"""


def _ensure_tools() -> None:
    missing = [pkg for tool, pkg in APT_PACKAGES.items() if not _which(tool)]
    if missing and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       check=False, env=env, stdout=subprocess.DEVNULL)  # fmt: skip


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (str(p) for p in (Path("/usr/sbin") / tool, Path("/usr/bin") / tool) if p.exists()), None
    )


def _wait_log(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early:\n{text}")
        time.sleep(0.1)
    raise RuntimeError(f"{needle!r} not seen in {path} after {timeout}s")


@dataclass(frozen=True)
class Measured:
    rate: float
    """Probes per second (wall clock)."""
    cpu_ms: float
    """CPU milliseconds per probe spent by the probing side (load generators excluded)."""
    note: str


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of live processes, from /proc (independent of machine load)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _process_tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout  # fmt: skip
    return [pid, *(int(p) for p in out.split())]


@contextlib.contextmanager
def _worker(redis_url: str, tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp / "worker.log"
    env = {**os.environ, **PIPELINE_ENV, "OPSQ_REDIS_URL": redis_url,
           "OPSQ_DATA_DIR": str(tmp / "data"), "OPSQ_METRICS__PORT": "0",
           "OPSQ_LOG_LEVEL": "WARNING"}  # fmt: skip
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--concurrency", "2",
            "--pool", "prefork", "--loglevel", "WARNING", "--without-gossip",
            "--without-mingle", "--without-heartbeat"]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        _wait_log(log, "worker metrics on", proc, 60)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def end_to_end(base: str) -> Iterator[Callable[[], Measured]]:
    """A private valkey-server and a 2-process worker; yields one measurement."""
    targets = bench_targets(base, N)
    with tempfile.TemporaryDirectory(prefix="opsq-bench-e2e-") as tmp_dir:
        tmp = Path(tmp_dir)
        server = RedisServer(tmp / "valkey", appendonly=False)
        server.start()
        try:
            with _worker(server.url, tmp) as worker:
                settings = load_settings(None, redis_url=server.url, probes={
                    "batch_size": int(PIPELINE_ENV["OPSQ_PROBES__BATCH_SIZE"])})  # fmt: skip
                producer = ProbeProducer(settings)

                def measure() -> Measured:
                    assert server.proc is not None
                    pids = [*_process_tree(worker.pid), server.proc.pid]
                    cpu, began = _cpu_seconds(pids), time.perf_counter()
                    submitted = producer.submit(targets, source="bench")
                    summary = producer.wait(submitted.run_id, timeout=600)
                    elapsed = time.perf_counter() - began
                    cpu = _cpu_seconds(pids) - cpu
                    note = (
                        f"{summary['up']} up, {summary['down']} down, {submitted.batches} "
                        "batches; CPU of worker + valkey"
                    )
                    return Measured(N / elapsed, cpu * 1000 / N, note)

                yield measure
                producer.close()
        finally:
            server.stop()


def bench_in_process(base: str) -> Measured:
    targets = bench_targets(base, N)
    concurrency = int(PIPELINE_ENV["OPSQ_PROBES__CONCURRENCY"])
    cpu, began = time.process_time(), time.perf_counter()
    results = run_probes(targets, concurrency=concurrency, per_host_concurrency=concurrency)
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu
    up = sum(r.up for r in results)
    return Measured(N / elapsed, cpu * 1000 / N, f"{up} up, {N - up} down, 1 process")


@contextlib.contextmanager
def blackbox(base: str) -> Iterator[Callable[[], Measured]]:
    """blackbox_exporter with a generated config; yields one ``hey`` measurement."""
    with tempfile.TemporaryDirectory(prefix="opsq-bench-bb-") as tmp_dir:
        config = Path(tmp_dir) / "blackbox.yml"
        config.write_text(BLACKBOX_CONFIG)
        port = free_port()
        proc = subprocess.Popen(
            [_which("prometheus-blackbox-exporter") or "prometheus-blackbox-exporter",
             f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        probe = f"http://127.0.0.1:{port}/probe?target={base}/ok&module=http_2xx"

        def measure() -> Measured:
            cpu = _cpu_seconds([proc.pid])
            out = subprocess.run(
                ["hey", "-n", str(N), "-c", str(HEY_CONCURRENCY), probe],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
            codes = ", ".join(f"{n} x {c}" for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) resp", out))
            cpu = _cpu_seconds([proc.pid]) - cpu
            done = int(re.search(r"\[200\]\s+(\d+) resp", out).group(1))  # type: ignore[union-attr]
            note = f"hey -n {N} -c {HEY_CONCURRENCY}: HTTP {codes}; CPU of blackbox_exporter"
            return Measured(rate, cpu * 1000 / done, note)

        try:
            _wait_probe_success(probe, proc)
            yield measure
        finally:
            proc.terminate()
            proc.wait(10)


def _wait_probe_success(probe: str, proc: subprocess.Popen[bytes]) -> None:
    """Blackbox answers 200 even for a failed probe: check probe_success once."""
    for _ in range(100):
        if proc.poll() is not None:
            raise RuntimeError("blackbox_exporter exited at start")
        done = subprocess.run(["curl", "-s", probe], capture_output=True, text=True, check=False)
        if "probe_success 1" in done.stdout:
            return
        time.sleep(0.1)
    raise RuntimeError("blackbox_exporter probe of nginx did not succeed")


def bench_curl(base: str) -> Measured:
    up = 0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    for i in range(CURL_SAMPLE):
        done = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-m", "10", "-w", "%{http_code}", f"{base}/ok?i={i}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        up += done.stdout == "200"
    elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Measured(CURL_SAMPLE / elapsed, cpu * 1000 / CURL_SAMPLE,
                    f"{up}/{CURL_SAMPLE} up, one curl process per target")  # fmt: skip


def main() -> int:
    _ensure_tools()
    best: dict[str, Measured] = {}

    def keep(name: str, measured: Measured) -> None:
        if name not in best or measured.rate > best[name].rate:
            best[name] = measured

    with local_server() as (base, server), end_to_end(base) as e2e, blackbox(base) as bb:
        print(f"{N} targets on local {server} ({base}), fresh connection per probe, "
              f"best of {ROUNDS} interleaved rounds", flush=True)  # fmt: skip
        for _ in range(ROUNDS):
            keep(E2E, e2e())
            keep(IN_PROCESS, bench_in_process(base))
            keep(BLACKBOX, bb())
        keep(CURL, bench_curl(base))
    print("\n| path | probes/s | CPU ms/probe | notes |\n|---|---:|---:|---|")
    for name, m in best.items():
        print(f"| {name} | {m.rate:,.0f} | {m.cpu_ms:.3f} | {m.note} |")
    e2e_rate, in_process, blackbox_rate, curl = (
        best[k].rate for k in (E2E, IN_PROCESS, BLACKBOX, CURL)
    )
    print(f"\nend-to-end / blackbox_exporter: {e2e_rate / blackbox_rate:.2f}x (target >= 1.5x)")
    print(f"Celery path / in-process engine: {e2e_rate / in_process:.2f}x (target >= 0.8x)")
    print(f"end-to-end / serial curl: {e2e_rate / curl:.1f}x")
    cpu_ratio = best[BLACKBOX].cpu_ms / best[E2E].cpu_ms
    print(f"CPU per probe, blackbox_exporter / opsq end to end: {cpu_ratio:.2f}x")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")  # fmt: skip
    settings = ", ".join(f"{k.removeprefix('OPSQ_PROBES__').lower()}={v}"
                         for k, v in PIPELINE_ENV.items())  # fmt: skip
    print(f"pipeline settings: {settings}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
