"""Benchmark: API requests per deleted object for the informer, the one-shot and a poller.

Setup: N finished Jobs (default 10,000) across 50 namespaces on the fake API server
(``tests/fakekube``, in this process). Their completion times are spread so that with
the rule ``finished, older_than: 1h`` they become due evenly over one simulated hour.
The hour is simulated with a clock in 60 steps of one minute; every strategy sees the
same cluster and the same due times:

- ``opsq watch``: one paginated LIST, one WATCH, then one DELETE per due object
  (preconditions uid+resourceVersion from the cache) - the informer path;
- ``opsq watch`` + ``verify_with_get``: GET before every DELETE, as Kubernetes' TTL
  controller does (the conservative peer);
- ``opsq cleanup`` every minute (a CronJob): a paginated LIST of everything each time;
- naive poller (kube-janitor's way): an unpaginated LIST of everything every minute,
  then a plain DELETE of each due object.

Reported: requests per deleted object, LIST requests, objects transferred by LISTs,
wall time (client and fake server share this process and its GIL), and the informer
cache's memory (tracemalloc). ``OPSQ_BENCH_CLEANUP_JOBS`` scales N down for a quick run.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from opsq.core.config.cleanup import CleanupSettings  # noqa: E402
from opsq.engines.cleanup.executor import Executor  # noqa: E402
from opsq.engines.cleanup.informer import Informer  # noqa: E402
from opsq.engines.cleanup.kube import Kube  # noqa: E402
from opsq.engines.cleanup.planner import evaluate, format_time, meta  # noqa: E402
from opsq.engines.cleanup.watcher import Watcher  # noqa: E402
from producers.cleanup import local_executor, run_once  # noqa: E402
from producers.watch import NoClaims, WatchProducer  # noqa: E402
from tests.fakekube.server import FakeKube  # noqa: E402

NAMESPACES = 50
STEPS = 60
STEP_S = 60.0
HOUR = STEPS * STEP_S
RULE = {
    "name": "finished-jobs",
    "resource": "batch/v1/jobs",
    "when": {"finished": True, "older_than": "1h"},
}


@dataclass
class Row:
    name: str
    deleted: int
    requests: int
    lists: int
    listed_objects: int
    wall: float
    watches: int = 0

    @property
    def per_object(self) -> float:
        return self.requests / max(1, self.deleted)


def settings(**extra: Any) -> CleanupSettings:
    return CleanupSettings.model_validate(
        {"dry_run": False, "max_deletions_per_run": 10**9, "delete_rate": 10**9,
         "rules": [RULE], "page_size": 500, "watch_timeout": 30, **extra}
    )  # fmt: skip


def populate(fake: FakeKube, count: int, t0: float) -> None:
    """Jobs finished over the hour before t0: each becomes due at t0 + i * HOUR / count."""
    for i in range(count):
        finished = t0 - HOUR + (i + 0.5) * HOUR / count
        stamp = format_time(finished)
        job = {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"job-{i:05d}", "uid": str(uuid.uuid4()),
                         "creationTimestamp": format_time(finished - 60)},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}],
                                           "restartPolicy": "Never"}}},
            "status": {"succeeded": 1, "completionTime": stamp, "conditions": [
                {"type": "Complete", "status": "True", "lastTransitionTime": stamp}]},
        }  # fmt: skip
        fake.create("batch/v1/jobs", job, namespace=f"ns-{i % NAMESPACES:02d}")


class SimClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _listed(kube: Kube) -> int:
    return int(kube.requests["list"])


def run_watch(fake: FakeKube, kubeconfig: Path, t0: float, *, verify_with_get: bool) -> Row:
    cfg = settings(verify_with_get=verify_with_get)
    kube = Kube.connect(str(kubeconfig))
    clock = SimClock(t0)
    executor = Executor(kube, cfg, clock=clock)
    watcher = Watcher(cfg, kube, clock=clock)
    producer = WatchProducer(
        cfg, watcher, lambda t, _c: executor.execute(t, dry_run=False), NoClaims(),
        clock=clock, ahead=0.0,
    )  # fmt: skip
    stop = threading.Event()
    started = time.perf_counter()
    threads = producer.start_informers(stop)
    while not watcher.synced:
        time.sleep(0.01)
    listed = sum(len(i) for i in watcher.informers)
    for _ in range(STEPS):
        clock.now += STEP_S
        producer.tick()
    wall = time.perf_counter() - started
    stop.set()
    fake.break_watches()
    for thread in threads:
        thread.join(timeout=10)
    name = (
        "opsq watch + GET before DELETE (TTL-controller way)"
        if verify_with_get
        else "opsq watch (informer)"
    )
    requests = sum(kube.requests.values())
    kube.close()
    return Row(name, producer.sent, requests, _listed(kube), listed, wall, kube.requests["watch"])


def run_oneshot(kubeconfig: Path, t0: float) -> Row:
    cfg = settings()
    kube = Kube.connect(str(kubeconfig))
    executor = local_executor(Executor(kube, cfg))
    deleted = listed = 0
    started = time.perf_counter()
    for step in range(1, STEPS + 1):
        report = run_once(cfg, kube, executor, dry_run=False, now=t0 + step * STEP_S)
        deleted += len(report.deleted)
        listed += len(report.plan)
    wall = time.perf_counter() - started
    kube.close()
    return Row(
        "opsq cleanup every minute (one-shot)",
        deleted,
        sum(kube.requests.values()),
        _listed(kube),
        listed,
        wall,
    )


def run_naive(kubeconfig: Path, t0: float) -> Row:
    """kube-janitor's loop: list everything (one big page), delete what is due."""
    cfg = settings()
    rule = cfg.rules[0]
    kube = Kube.connect(str(kubeconfig))
    deleted = listed = 0
    started = time.perf_counter()
    for step in range(1, STEPS + 1):
        now = t0 + step * STEP_S
        items = kube.list(rule.resource, None, limit=10**7).get("items") or []
        listed += len(items)
        for obj in items:
            due = evaluate(rule, obj).due_at
            if due is not None and due <= now:
                md = meta(obj)
                kube.delete(rule.resource, md["namespace"], md["name"], uid=md["uid"],
                            resource_version=None, propagation_policy="Background",
                            grace_period_seconds=None, dry_run=False)  # fmt: skip
                deleted += 1
    wall = time.perf_counter() - started
    kube.close()
    return Row(
        "naive poller, full LIST every minute (kube-janitor way)",
        deleted,
        sum(kube.requests.values()),
        _listed(kube),
        listed,
        wall,
    )


def cache_memory(kubeconfig: Path) -> tuple[int, int]:
    """Bytes held by a synced informer cache, and the object count.

    Measured as what dropping the cache frees (tracemalloc), so allocations of the
    in-process fake server and transient response buffers are not counted.
    """
    cfg = settings()
    kube = Kube.connect(str(kubeconfig))
    informer = Informer(
        kube, cfg.rules[0].resource, on_object=lambda o: None, on_gone=lambda o: None,
        page_size=cfg.page_size,
    )  # fmt: skip
    tracemalloc.start()
    informer.relist()
    cached = len(informer)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    informer.by_name.clear()
    informer.by_uid.clear()
    gc.collect()
    freed = held - tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    kube.close()
    return freed, cached


def measure(name: str, count: int, body: Callable[[FakeKube, Path, float], Row]) -> Row:
    with FakeKube() as fake, TemporaryDirectory() as tmp:
        kubeconfig = fake.kubeconfig(Path(tmp) / "kubeconfig")
        t0 = time.time()
        populate(fake, count, t0)
        row = body(fake, kubeconfig, t0)
        remaining = len(fake.list("batch/v1/jobs"))
        print(f"  {name}: deleted {row.deleted}, {remaining} left", file=sys.stderr, flush=True)
        return row


def _table(rows: list[Row]) -> str:
    base = rows[0]
    lines = [
        "",
        "| strategy | deleted | API requests | requests/deleted | LISTs | objects listed "
        "| listed vs informer | wall s | wall vs informer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.deleted} | {r.requests} | {r.per_object:.3f} | {r.lists} "
            f"| {r.listed_objects} | {r.listed_objects / max(1, base.listed_objects):.1f}x "
            f"| {r.wall:.1f} | {r.wall / max(1e-9, base.wall):.1f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    count = int(os.environ.get("OPSQ_BENCH_CLEANUP_JOBS", "10000"))
    print(f"{count} finished Jobs in {NAMESPACES} namespaces, due evenly over a simulated hour "
          f"({STEPS} steps of {STEP_S:.0f}s); fake API server in-process")  # fmt: skip
    rows = [
        measure("watch", count, lambda f, k, t: run_watch(f, k, t, verify_with_get=False)),
        measure("watch+get", count, lambda f, k, t: run_watch(f, k, t, verify_with_get=True)),
        measure("one-shot", count, lambda f, k, t: run_oneshot(k, t)),
        measure("naive", count, lambda f, k, t: run_naive(k, t)),
    ]
    with FakeKube() as fake, TemporaryDirectory() as tmp:
        populate(fake, count, time.time())
        memory, cached = cache_memory(fake.kubeconfig(Path(tmp) / "kubeconfig"))
    base = rows[0]
    print(_table(rows))
    print(f"\ninformer cache: {cached} Jobs in {memory / 1e6:.1f} MB "
          f"({memory / max(1, cached):.0f} B/object, tracemalloc)")  # fmt: skip
    per_delete = (base.requests - base.lists - base.watches) / max(1, base.deleted)
    print(f"informer: {per_delete:.3f} requests per deleted object besides {base.lists} LISTs "
          f"and {base.watches} WATCHes")  # fmt: skip
    ok = base.deleted == count and per_delete <= 1.05
    verdict = "met" if ok else "MISSED"
    print(f"target <= 1.05 requests per deleted object plus constant LISTs: {verdict}")
    return 0 if ok else 1
