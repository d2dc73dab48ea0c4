"""Probe throughput on the user's path (``opsq probe FILE --wait``) vs blackbox_exporter.

One run, one local nginx (the config of :mod:`bench.probe_transports`), a private
valkey-server, targets files of N distinct URLs (10,000 and 100,000), a fresh
connection per probe everywhere. Rows:

a. **user path**: ``celery -A tasks worker`` started as a user starts it (no flags:
   prefork, one process per CPU, default settings), then ``opsq probe targets.yaml
   --wait --output json`` as a subprocess with the YAML file. The clock runs from
   ``Popen`` to the process's exit; the output is parsed and every target must be up.
   Measured with the default settings and with the tuned ones (:data:`TUNED`). Beside
   the time: the CLI's peak RSS (``wait4``), Redis's peak memory above its baseline
   during the run, and where the time went (start-up and loading until the run was
   enqueued, the run itself, reading and printing the results until exit).
b. **in-process** (today's figures, beside the user path, never instead of it): the
   producer called from Python with targets built in Python, same worker, clock from
   submit to the run being complete; and the engine alone (``run_probes``, no Celery).
c. **blackbox_exporter** driven by ``hey -c 64``: N requests to ``/probe?target=...``.
d. **serial curl loop** on a 300-target sample (what a cron'd script does).

Prints the table, then the ratios against the goals: user path with default settings
>= 1.5x blackbox_exporter at 10k, and 100k at no worse than linear cost per target.
Missing tools (nginx-light, hey, prometheus-blackbox-exporter, curl) are installed
with apt-get.

    python -m bench probes
    OPSQ_BENCH_PROBES_SIZES=2000 OPSQ_BENCH_ROUNDS=1 python -m bench probes   # quick
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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis
import yaml

from bench.probe_transports import bench_targets, local_server
from opsq.core.redis_server import RedisServer, free_port
from opsq.core.settings import load_settings
from opsq.engines.probe import run_probes
from producers.probes import ProbeProducer

SIZES = [int(n) for n in os.environ.get("OPSQ_BENCH_PROBES_SIZES", "10000,100000").split(",")]
ROUNDS = int(os.environ.get("OPSQ_BENCH_ROUNDS", "3"))
"""Best of interleaved rounds for 10k-target runs: the machine is shared, runs are noisy."""
LARGE = 50_000
"""Runs of at least this many targets are measured once per setting (each takes ~30 s)."""
CURL_SAMPLE = 300
HEY_CONCURRENCY = 64
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1800


@dataclass(frozen=True)
class Profile:
    name: str
    worker_env: dict[str, str]
    cli_env: dict[str, str]


DEFAULT = Profile("default", {}, {})
TUNED = Profile(
    "tuned",
    # One nginx serves every target: the per-host cap (64 per process) is the limit here.
    {"OPSQ_PROBES__PER_HOST_CONCURRENCY": "128"},
    {"OPSQ_PROBES__BATCH_SIZE": "500"},
)
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


@dataclass(frozen=True)
class Measured:
    seconds: float
    rate: float
    """Probes per second (wall clock)."""
    cpu_ms: float
    """CPU milliseconds per probe spent by the probing side (load generators excluded)."""
    note: str
    rss_mb: float | None = None
    redis_mb: float | None = None
    phases: dict[str, float] = field(default_factory=dict)


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


def _user_env(redis_url: str, tmp: Path, extra: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPSQ_")}
    return {**clean, "OPSQ_REDIS_URL": redis_url, "OPSQ_DATA_DIR": str(tmp / "data"),
            "OPSQ_METRICS__PORT": "0", **extra}  # fmt: skip


@contextlib.contextmanager
def _worker(redis_url: str, tmp: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A tasks worker`` with no flags, as the README tells users to start it."""
    log = tmp / f"worker-{time.monotonic_ns()}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("celery")), "-A", "tasks", "worker"],
            cwd=ROOT, env=_user_env(redis_url, tmp, env), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_log(log, "worker metrics on", proc, 60)
        time.sleep(1.0)  # mingle and gossip settle (a user's worker has them on)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_log(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in (path.read_text(errors="replace") if path.exists() else ""):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early:\n{path.read_text(errors='replace')}")
        time.sleep(0.1)
    raise RuntimeError(f"{needle!r} not seen in {path} after {timeout}s")


class _MemoryPeak:
    """Redis ``used_memory`` and a process's peak RSS, sampled every 50 ms.

    The process's peak is its ``VmHWM`` (/proc), not ``wait4``'s ``ru_maxrss``: that
    one survives exec, so a child forked from this (large) process would report this
    process's memory instead of its own."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.client = client
        self.baseline = self._used()
        self.peak = self.baseline
        self.pid: int | None = None
        self.hwm_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _used(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._used())
            if self.pid is not None:
                self.hwm_kb = max(self.hwm_kb, _vm_hwm_kb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (max(self.peak, self._used()) - self.baseline) / 2**20


def _vm_hwm_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def write_targets_file(path: Path, base: str, count: int) -> Path:
    """The user's file: a YAML list of name + url, one 10 s timeout for all."""
    doc = {
        "defaults": {"timeout": "10s"},
        "targets": [{"name": f"t{i}", "url": f"{base}/ok?i={i}"} for i in range(count)],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def user_path(
    file: Path, count: int, env: dict[str, str], worker_pids: list[int], client: redis.Redis[bytes]
) -> Measured:
    """``opsq probe FILE --wait --output json`` from process start to exit."""
    argv = [str(Path(sys.executable).with_name("opsq")), "probe", str(file), "--wait",
            "--output", "json"]  # fmt: skip
    memory = _MemoryPeak(client)
    cpu_before = _cpu_seconds(worker_pids)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started_wall, began = time.time(), time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err)
        memory.pid = proc.pid
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed, ended_wall = time.perf_counter() - began, time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)
        redis_mb = memory.stop()
        worker_cpu = _cpu_seconds(worker_pids) - cpu_before
        out.seek(0)
        err.seek(0)
        summary, stderr = orjson.loads(out.read()), err.read().decode(errors="replace")
    if proc.returncode != 0 or summary["up"] != count:
        raise RuntimeError(f"opsq probe exited {proc.returncode}, {summary['up']} up\n{stderr}")
    cpu = worker_cpu + usage.ru_utime + usage.ru_stime
    return Measured(
        elapsed, count / elapsed, cpu * 1000 / count,
        f"{summary['up']} up; CPU of CLI + workers", memory.hwm_kb / 1024, redis_mb,
        _phases(summary, stderr, started_wall, ended_wall),
    )  # fmt: skip


def _phases(summary: dict[str, object], stderr: str, start: float, end: float) -> dict[str, float]:
    """Where the time went, from the run's own timestamps and the CLI's stderr line."""
    created = float(summary["created_at"])  # type: ignore[arg-type]
    finished = summary["finished_at"]  # None: read before it was packed (see ProbeProducer.wait)
    finished = created + float(summary["duration_s"]) if finished is None else float(finished)  # type: ignore[arg-type]
    loaded = re.search(r"read and validated in ([\d.]+)s", stderr)
    return {
        "start-up + load + enqueue": created - start,
        "  of which read+validate+encode": float(loaded.group(1)) if loaded else float("nan"),
        "run (enqueued -> last result packed)": finished - created,
        "wait + read + print + exit": end - finished,
    }


def producer_in_process(base: str, count: int, redis_url: str, worker_pids: list[int]) -> Measured:
    """Today's in-process figure: targets built in Python, submit -> run complete."""
    targets = bench_targets(base, count)
    producer = ProbeProducer(load_settings(None, redis_url=redis_url))
    try:
        cpu, began = _cpu_seconds(worker_pids), time.perf_counter()
        submitted = producer.submit(targets, source="bench")
        while not producer.store.progress(submitted.run_id).finished:
            time.sleep(0.01)
        elapsed = time.perf_counter() - began
        cpu = _cpu_seconds(worker_pids) - cpu
    finally:
        producer.close()
    note = f"{submitted.batches} batches; producer in this process; CPU of workers"
    return Measured(elapsed, count / elapsed, cpu * 1000 / count, note)


def engine_in_process(base: str, count: int) -> Measured:
    targets = bench_targets(base, count)
    cpu, began = time.process_time(), time.perf_counter()
    results = run_probes(targets, concurrency=128, per_host_concurrency=128)
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu
    up = sum(r.up for r in results)
    return Measured(elapsed, count / elapsed, cpu * 1000 / count, f"{up} up; 1 process")


@contextlib.contextmanager
def blackbox(base: str) -> Iterator[Callable[[int], Measured]]:
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

        def measure(count: int) -> Measured:
            cpu, began = _cpu_seconds([proc.pid]), time.perf_counter()
            out = subprocess.run(
                ["hey", "-n", str(count), "-c", str(HEY_CONCURRENCY), probe],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            elapsed = time.perf_counter() - began
            rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
            codes = ", ".join(f"{n} x {c}" for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) resp", out))
            cpu = _cpu_seconds([proc.pid]) - cpu
            done = int(re.search(r"\[200\]\s+(\d+) resp", out).group(1))  # type: ignore[union-attr]
            note = f"hey -n {count} -c {HEY_CONCURRENCY}: HTTP {codes}; CPU of blackbox_exporter"
            return Measured(elapsed, rate, cpu * 1000 / done, note)

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
    return Measured(elapsed, CURL_SAMPLE / elapsed, cpu * 1000 / CURL_SAMPLE,
                    f"{up}/{CURL_SAMPLE} up, one curl process per target")  # fmt: skip


class Best:
    """The best (fastest) measurement per row, in the order rows were first seen."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int, str], Measured] = {}

    def keep(self, path: str, count: int, settings: str, measured: Measured) -> None:
        key = (path, count, settings)
        old = self.rows.get(key)
        if old is None or measured.rate > old.rate:
            self.rows[key] = measured
        print(f"  {path} {count:,} {settings}: {measured.rate:,.0f}/s", flush=True)

    def rate(self, path: str, count: int, settings: str = "") -> float | None:
        found = self.rows.get((path, count, settings))
        return None if found is None else found.rate


USER = "user path: opsq probe FILE --wait --output json"
PRODUCER = "in-process: producer -> run complete (same workers)"
ENGINE = "in-process: engine alone (no Celery, no Redis)"
BLACKBOX = "blackbox_exporter driven by hey -c 64"
CURL = f"serial curl loop ({CURL_SAMPLE} targets)"


def _measure_profile(profile: Profile, ctx: dict[str, object], best: Best) -> None:
    base, server, tmp = str(ctx["base"]), ctx["server"], Path(str(ctx["tmp"]))
    assert isinstance(server, RedisServer)
    client = redis.Redis.from_url(server.url)
    bb = ctx["blackbox"]
    assert callable(bb)
    with _worker(server.url, tmp, profile.worker_env) as worker:
        pids = [*_process_tree(worker.pid), *([server.proc.pid] if server.proc else [])]
        env = _user_env(server.url, tmp, profile.cli_env)
        files = ctx["files"]
        assert isinstance(files, dict)
        for count in SIZES:
            for _ in range(1 if count >= LARGE else ROUNDS):
                best.keep(
                    USER, count, profile.name, user_path(files[count], count, env, pids, client)
                )
                if profile is DEFAULT:
                    best.keep(BLACKBOX, count, "", bb(count))
                    if count < LARGE:
                        best.keep(PRODUCER, count, profile.name,
                                  producer_in_process(base, count, server.url, pids))  # fmt: skip
    client.close()


def main() -> int:
    _ensure_tools()
    best = Best()
    with (
        local_server() as (base, server_name),
        blackbox(base) as bb,
        tempfile.TemporaryDirectory(prefix="opsq-bench-probes-") as tmp_dir,
    ):
        tmp = Path(tmp_dir)
        server = RedisServer(tmp / "valkey", appendonly=False)
        server.start()
        try:
            files = {n: write_targets_file(tmp / f"targets-{n}.yaml", base, n) for n in SIZES}
            print(f"targets files {', '.join(f'{n:,}' for n in SIZES)} on local {server_name} "
                  f"({base}), fresh connection per probe, best of {ROUNDS} rounds below "
                  f"{LARGE:,} targets, 1 above", flush=True)  # fmt: skip
            ctx = {"base": base, "server": server, "tmp": tmp, "files": files, "blackbox": bb}
            for profile in (DEFAULT, TUNED):
                _measure_profile(profile, ctx, best)
            small = min(SIZES)
            for _ in range(ROUNDS):
                best.keep(ENGINE, small, "", engine_in_process(base, small))
            best.keep(CURL, CURL_SAMPLE, "", bench_curl(base))
        finally:
            server.stop()
    _report(best)
    return 0


def _report(best: Best) -> None:
    print("\n| path | targets | settings | seconds | probes/s | CPU ms/probe | CLI peak RSS MB "
          "| Redis peak MB | notes |\n|---|---:|---|---:|---:|---:|---:|---:|---|")  # fmt: skip
    for (path, count, settings), m in best.rows.items():
        rss = "" if m.rss_mb is None else f"{m.rss_mb:,.0f}"
        mem = "" if m.redis_mb is None else f"{m.redis_mb:,.1f}"
        print(f"| {path} | {count:,} | {settings} | {m.seconds:.2f} | {m.rate:,.0f} | "
              f"{m.cpu_ms:.3f} | {rss} | {mem} | {m.note} |")  # fmt: skip
    print("\nwhere the user path's time went (seconds):")
    for (_, count, settings), m in best.rows.items():
        if m.phases:
            parts = "; ".join(f"{k.strip()} {v:.2f}" for k, v in m.phases.items())
            print(f"  {count:,} {settings}: {parts}")
    _ratios(best)
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"tuned settings: worker {TUNED.worker_env}, CLI {TUNED.cli_env}")


def _ratios(best: Best) -> None:
    small, large = min(SIZES), max(SIZES)
    bb = best.rate(BLACKBOX, small)
    for profile in (DEFAULT, TUNED):
        user = best.rate(USER, small, profile.name)
        if user and bb:
            goal = " (goal >= 1.5x)" if profile is DEFAULT else ""
            print(f"user path ({profile.name}) / blackbox_exporter at {small:,}: "
                  f"{user / bb:.2f}x{goal}")  # fmt: skip
        big = best.rate(USER, large, profile.name)
        if user and big and large != small:
            print(f"cost per target at {large:,} / at {small:,} ({profile.name}): "
                  f"{user / big:.2f} (goal <= 1.0: linear)")  # fmt: skip
    producer = best.rate(PRODUCER, small, DEFAULT.name)
    user = best.rate(USER, small, DEFAULT.name)
    if producer and user:
        print(f"user path / in-process producer at {small:,} (default): {user / producer:.2f}x")
    bb_large = best.rate(BLACKBOX, large)
    user_large = best.rate(USER, large, DEFAULT.name)
    if bb_large and user_large and large != small:
        print(f"user path (default) / blackbox_exporter at {large:,}: {user_large / bb_large:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
