"""Cost of target state and alerting: probes/s with monitoring on vs off, same run.

One private valkey-server, one local nginx (as :mod:`bench.probes`), one real
``celery -A tasks worker`` (2 processes on 2 cores) with the default settings
(``OPSQ_BENCH_MONITOR_PROFILE=tuned``: the README's tuned pipeline settings), N targets
(default 3,000) of which 10% point at a closed port (down). Interleaved rounds (the
order of the paths rotates, so a load change on a shared machine hits each), the
median of each:

a. **off**: the targets as a plain run (``ProbeProducer.submit``, what ``opsq probe``
   does): no state, no alerts. Clock: enqueue -> summary stored.
b. **on, state+alerts only**: the same batches, sent the same way, but registered as a
   run of probe set ``state`` (what ``opsq.probe_set`` does) with a webhook notifier
   and ``history: false``: the workers apply each batch to target state as they record
   it, the run's end closes the run; nothing changes state. Clock: enqueue -> the
   run's verdicts applied. This is the cost issue 12's goal (< 10%) is about.
b'. **on, steady**: as b, as set ``bench`` with history recorded too (the default).
c. **on, churn**: as b, but before each round a different 10% of the targets go down
   and the previous 10% come back (thresholds 1): 20% of targets transition each run
   and each transition is delivered to a local webhook receiver. Clock: send -> verdicts
   applied and the ``alerts`` queue drained (every notification delivered).

Prints the median probes/s of each path, and the cost of b and b' as the median of each
round's on/off ratio, with the machine's load. On a shared
machine one run's probing time varies more than the whole cost (per-round ratios of
0.3-2.6 were seen with load 3-12 on 2 cores), so the bench also times the on path's
serial extra directly - registering the spec before the batches, and applying the
verdicts after the last result - and prints it as a share of the median off run.

    python -m bench monitor
    OPSQ_BENCH_MONITOR_N=1000 OPSQ_BENCH_ROUNDS=7 OPSQ_BENCH_MONITOR_CHURN=1 python -m bench monitor

It also prints the CPU time per run of the worker (with its pool) and valkey-server.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml

from bench.probe_transports import local_server
from bench.probes import DEFAULT, TUNED, _worker
from opsq.core import keys
from opsq.core.config.probes import TargetsFile
from opsq.core.redis_server import RedisServer, free_port
from opsq.core.runs import plan_run
from opsq.core.settings import load_settings
from opsq.core.targets import encode_targets
from opsq.engines.monitor.spec import build_spec
from opsq.engines.monitor.store import MonitorStore
from producers.probes import ProbeProducer

N = int(os.environ.get("OPSQ_BENCH_MONITOR_N", "3000"))
ROUNDS = int(os.environ.get("OPSQ_BENCH_ROUNDS", "15"))
"""15: a 3,000-target run lasts ~0.7 s, and round-to-round ratios spread 0.76-1.17 on
the quiet 2-core VM; with 5 rounds the median moved by more than the cost itself."""
CHURN_ROUNDS = int(os.environ.get("OPSQ_BENCH_MONITOR_CHURN", "2"))
"""Rounds that also measure churn (each delivers ~20% of N notifications: slow)."""
PROFILE = TUNED if os.environ.get("OPSQ_BENCH_MONITOR_PROFILE") == "tuned" else DEFAULT
"""The user's default settings (batches of 100), or the README's tuned ones (500)."""
STATE = "on, state+alerts only"
"""The same runs as a set with ``history: false``: what issue 12's goal is about."""
DOWN_SHARE = 10
"""One target in DOWN_SHARE is down in each round."""


class Sink:
    """A webhook receiver that counts what it gets (204, no body)."""

    def __init__(self) -> None:
        self.count = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink.count += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def targets(base: str, closed: str, shift: int) -> list[dict[str, Any]]:
    return [{"name": f"t{i}", "timeout": 10,
             "url": f"{closed}/x?i={i}" if (i + shift) % DOWN_SHARE == 0 else f"{base}/ok?i={i}"}
            for i in range(N)]  # fmt: skip


def write(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def main() -> int:
    print(f"bench/monitor: N={N}, rounds={ROUNDS}, {PROFILE.name} settings, load "
          f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    with local_server() as (base, what), tempfile.TemporaryDirectory(prefix="opsq-mon-") as t:
        tmp = Path(t)
        closed = f"http://127.0.0.1:{free_port()}"
        sink = Sink()
        file = write(tmp / "targets.yaml", {"targets": targets(base, closed, 0)})
        config = write(tmp / "opsq.yaml", {
            "probes": {"sets": {name: {"file": str(file), "interval": 3600, "deadline": 600,
                                       "failure_threshold": 1, "success_threshold": 1,
                                       "notify": ["hook"], "history": history}
                                for name, history in (("bench", True), ("state", False))}},
            "alerts": {"notifiers": {"hook": {"kind": "webhook", "url": sink.url}}},
        })  # fmt: skip
        server = RedisServer(tmp / "valkey", appendonly=False)
        server.start()
        try:
            with _worker(server.url, tmp, {**PROFILE.worker_env, "OPSQ_CONFIG": str(config)}) as w:
                groups = (w.pid, server.proc.pid if server.proc else -1)
                results = run_rounds(server.url, config, file, base, closed, sink, groups)
        finally:
            server.stop()
    report(results, what)
    return 0


def cpu_seconds(groups: tuple[int, ...]) -> float:
    """CPU time (user + system) of every process in these process groups (the worker and
    its pool, valkey-server): what a run costs the machine, whatever the load."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) in groups:  # pgrp; utime and stime in clock ticks
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_rounds(
    redis_url: str, config: Path, file: Path, base: str, closed: str, sink: Sink,
    groups: tuple[int, ...],
) -> dict[str, list[float]]:  # fmt: skip
    """Both paths send the same validated batches from here (no file read by a worker):
    the only difference is the monitoring spec registered for the run, so the figure
    is the cost of state and alerting alone."""
    settings = load_settings(config, redis_url=redis_url, probes={
        "batch_size": int(PROFILE.cli_env.get("OPSQ_PROBES__BATCH_SIZE", 100))})  # fmt: skip
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    producer = ProbeProducer(settings)
    monitor = MonitorStore(client, settings.alerts)
    steady = load_targets(targets(base, closed, 0))
    results: dict[str, list[float]] = {"off": [], STATE: [], "on, steady": [], "on, churn": []}
    tails: dict[str, list[float]] = {"register": [], "apply": [], "state apply": []}
    cpu: dict[str, list[float]] = {"off": [], STATE: [], "on, steady": []}

    def run(
        batch: list[Any], *, monitored: bool, drain: bool = False, name: str = "bench"
    ) -> float:
        began = time.perf_counter()
        plan = plan_run(encode_targets(batch, settings.probes.batch_size), kind="beat",
                        retention=settings.runs.retention.beat, source="bench",
                        probe_set=name)  # fmt: skip
        if monitored:  # as beat's opsq.probe_set does: the spec before any batch
            monitor.register(plan.run_id, build_spec(name, settings.probes.sets[name], batch,
                                                     created_at=time.time()))  # fmt: skip
        registered = time.perf_counter()
        run_id = producer.store.submit(plan).run_id
        wait(lambda: producer.store.progress(run_id).complete, "run complete")
        if monitored:
            complete = time.perf_counter()
            wait(lambda: client.exists(keys.monitor_applied(run_id)), "verdicts applied")
            if not drain and name == "state":
                tails["state apply"].append(time.perf_counter() - complete)
            elif not drain:  # where the steady cost goes: before the batches, after them
                tails["register"].append(registered - began)
                tails["apply"].append(time.perf_counter() - complete)
        if drain:
            wait(
                lambda: (
                    client.llen(keys.QUEUE_ALERTS) == 0
                    and not client.keys(keys.monitor_outbox("*"))
                    and client.hlen("unacked") == 0
                ),
                "alerts drained",
            )
        return N / (time.perf_counter() - began)

    try:
        for name in ("bench", "state"):  # first run: every target unknown -> its state
            run(steady, monitored=True, name=name)
        paths = {"off": {"monitored": False}, STATE: {"monitored": True, "name": "state"},
                 "on, steady": {"monitored": True}}  # fmt: skip
        for number in range(ROUNDS):
            # Rotate the order: on a shared machine load drifts within a round too.
            order = list(paths)[number % 3 :] + list(paths)[: number % 3]
            for path in order if number % 2 == 0 else reversed(order):
                used = cpu_seconds(groups)
                results[path].append(run(steady, **paths[path]))  # type: ignore[arg-type]
                cpu[path].append(cpu_seconds(groups) - used)
            print(f"  round {number + 1}: off {results['off'][-1]:,.0f}/s, state+alerts "
                  f"{results[STATE][-1]:,.0f}/s, +history {results['on, steady'][-1]:,.0f}/s, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
            if number >= CHURN_ROUNDS:
                continue
            sent = sink.count
            results["on, churn"].append(run(load_targets(targets(base, closed, number + 1)),
                                            monitored=True, drain=True))  # fmt: skip
            print(f"  round {number + 1}: {sink.count - sent} notifications delivered", flush=True)
            run(steady, monitored=True, drain=True)  # back to the steady pattern
        ends = ended_runs(client)
        print(f"  runs whose end still applied targets (not batch by batch): {len(ends)}"
              f"{' (' + ', '.join(ends) + ')' if ends else ''}", flush=True)  # fmt: skip
    finally:
        producer.close()
        client.close()
    results["extra s"] = [statistics.median(tails["register"]) + statistics.median(tails["apply"])]
    spent = {path: statistics.median(values) for path, values in cpu.items()}
    print("  CPU per run (worker and its pool, valkey-server; median): " + ", ".join(
        f"{path} {value:.2f} s ({value / spent['off'] - 1:+.1%})" for path, value in spent.items()),
        flush=True)  # fmt: skip
    print(f"  steady on-path extras (median): spec registered in "
          f"{statistics.median(tails['register']) * 1000:.0f} ms; verdicts applied "
          f"{statistics.median(tails['apply']) * 1000:.0f} ms after the last result "
          f"({statistics.median(tails['state apply']) * 1000:.0f} ms without history)",
          flush=True)  # fmt: skip
    return results


def ended_runs(client: redis.Redis[str]) -> list[str]:
    """Runs (of the last 15 minutes) whose end applied targets rather than only closing
    the run: the first run of a set, the first after an hour turned, a batch whose
    worker died... In a steady bench none should be."""
    entries = client.xrange(keys.MONITOR_VERDICTS)
    return [f"{f['run_id']}: {len(orjson.loads(f['verdicts']))} targets" for _, f in entries
            if not f.get("part")]  # fmt: skip


def load_targets(raw: list[dict[str, Any]]) -> list[Any]:
    return list(TargetsFile.model_validate({"targets": raw}).targets)


def wait(check: Callable[[], object], what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.005)  # both paths end at a poll: 20 ms steps were ~2% of a run


def report(results: dict[str, list[float]], what: str) -> None:
    (extra,) = results.pop("extra s")
    middle = {name: statistics.median(values) for name, values in results.items() if values}
    ratios = [on / off for off, on in zip(results["off"], results["on, steady"], strict=True)]
    state_ratios = [on / off for off, on in zip(results["off"], results[STATE], strict=True)]
    print(
        f"\n| path ({N} targets, {what}, {PROFILE.name} settings) | probes/s (median of "
        f"{ROUNDS}) | vs off |\n|---|---:|---:|"
    )
    for name, value in middle.items():
        print(f"| {name} | {value:,.0f} | {value / middle['off']:.2f}x |")
    cost = 1 - statistics.median(ratios)
    state_cost = 1 - statistics.median(state_ratios)
    print(
        f"\nstate+alerting cost (set with history: false): {state_cost:.1%} (median of the "
        f"rounds' on/off ratios {', '.join(f'{r:.2f}' for r in state_ratios)}; goal < 10%: "
        f"{'met' if state_cost < 0.10 else 'NOT met'})"
    )
    churn = ""
    if "on, churn" in middle:
        churn = (f"; with 20% of targets transitioning and notified every run: "
                 f"{1 - middle['on, churn'] / middle['off']:.1%}")  # fmt: skip
    print(
        f"state+alerting+history cost (the default), steady state: {cost:.1%} (median of "
        f"the rounds' on/off ratios {', '.join(f'{r:.2f}' for r in ratios)}; "
        f"{'under' if cost < 0.10 else 'over'} 10%){churn}; load {os.getloadavg()[0]:.2f}"
    )
    # On a shared machine the probing time of one run varies more than the whole cost;
    # the serial extra (register + apply after the last result) is measured directly.
    print(
        f"direct: the on path's serial extra {extra * 1000:.0f} ms is "
        f"{extra / (N / middle['off']):.1%} of the median off run ({N / middle['off']:.2f} s)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
