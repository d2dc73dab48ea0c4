"""`opsq watch`: informer + due-time dispatch, 410 relists, and the Celery worker path."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import REGISTRY

from opsq.core import keys
from opsq.core.errors import RedisUnavailable, TemporaryError
from opsq.core.settings import load_settings
from opsq.engines.cleanup.executor import Executor
from opsq.engines.cleanup.kube import ApiUnavailable, Kube, _stream_lines
from opsq.engines.cleanup.watcher import Watcher
from producers.probes import producer_app
from producers.watch import NoClaims, RedisClaims, WatchProducer, celery_sender
from tests.cleanup.conftest import FINISHED_JOBS, JOBS, add, settings
from tests.cleanup.objects import job, pod
from tests.fakekube.server import FakeKube
from tests.support.workers import Worker

DAY = 86400.0


def _old_job(name: str, namespace: str = "team-a") -> dict[str, Any]:
    now = time.time()
    return job(name, namespace=namespace, created=now - DAY, finished=now - DAY / 2)


def _finished_patch() -> dict[str, Any]:
    old = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - DAY))
    return {"status": {"active": None, "completionTime": old, "conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": old}]}}  # fmt: skip


def _until(
    condition: Callable[[], bool], step: Callable[[], object], timeout: float = 30.0
) -> None:
    """Run *step* until *condition* holds (a wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        step()
        time.sleep(0.05)


def _relists() -> float:
    return REGISTRY.get_sample_value("opsq_watch_relists_total", {"resource": JOBS}) or 0.0


@pytest.fixture
def running() -> Iterator[tuple[threading.Event, list[WatchProducer]]]:
    stop = threading.Event()
    producers: list[WatchProducer] = []
    yield stop, producers
    stop.set()


def test_watch_deletes_objects_that_become_due_and_relists_after_410_without_missing_any(
    fake_kube: FakeKube, kube: Kube, running: tuple[threading.Event, list[WatchProducer]]
) -> None:
    stop, _ = running
    cfg = settings(dry_run=False, watch_timeout=5)
    add(fake_kube, job("runner", namespace="team-a", created=time.time() - DAY))
    watcher = Watcher(cfg, kube)
    executor = Executor(kube, cfg)
    producer = WatchProducer(
        cfg, watcher, lambda t, _c: executor.execute(t, dry_run=False), NoClaims(), ahead=0.0
    )
    assert producer.tick() == 0  # nothing happens before the cache has synced
    producer.start_informers(stop)
    _until(lambda: watcher.synced, lambda: None)
    fake_kube.wait_for_watches(1)
    assert producer.tick() == 0  # the running Job is not due

    # An event in the middle of the watch makes the Job due: it is deleted.
    fake_kube.patch(JOBS, "runner", _finished_patch(), "team-a")
    _until(lambda: fake_kube.find(JOBS, "runner", "team-a") is None, producer.tick)

    # The watch breaks, history is compacted while the informer cannot reconnect,
    # and a due Job appears in that blind window: the 410 must lead to a relist.
    relists = _relists()
    fault = fake_kube.inject_fault(500, verb="watch", count=None)
    fake_kube.break_watches()
    _until(lambda: fault.hits >= 1, lambda: None)
    add(fake_kube, _old_job("born-blind"))
    fake_kube.compact()
    fake_kube.clear_faults()
    _until(lambda: fake_kube.find(JOBS, "born-blind", "team-a") is None, producer.tick)
    assert _relists() >= relists + 1
    assert len(fake_kube.requests("delete", "jobs.batch")) == 2


def test_informer_cache_is_indexed_by_name_and_uid_and_follows_deletes(
    fake_kube: FakeKube, kube: Kube, running: tuple[threading.Event, list[WatchProducer]]
) -> None:
    stop, _ = running
    created = add(fake_kube, job("a", namespace="team-a"))
    watcher = Watcher(settings(watch_timeout=5), kube)
    (informer,) = watcher.informers
    threading.Thread(target=informer.run, args=(stop,), daemon=True).start()
    _until(lambda: informer.synced, lambda: None)
    uid = created["metadata"]["uid"]
    assert informer.get("team-a", "a") is informer.get_by_uid(uid)
    fake_kube.wait_for_watches(1)
    fake_kube.delete(JOBS, "a", "team-a", propagation_policy="Background")
    _until(lambda: informer.get_by_uid(uid) is None, lambda: None)
    assert len(informer) == 0


@pytest.mark.slow
def test_watch_to_celery_worker_deletes_a_due_job_exactly_once(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    redis_client: redis.Redis,
    start_worker: Callable[..., Worker],
    running: tuple[threading.Event, list[WatchProducer]],
) -> None:
    stop, _ = running
    kubeconfig = kubeconfig_path()
    config = write_config(dry_run=False, watch_timeout=5)
    start_worker(
        queues=keys.QUEUE_CLEANUP,
        env={"OPSQ_CONFIG": str(config), "OPSQ_CLEANUP__KUBECONFIG": str(kubeconfig)},
    )
    full = load_settings(config, redis_url=redis_url)
    kube = Kube.connect(str(kubeconfig))
    watcher = Watcher(full.cleanup, kube)
    sender = celery_sender(producer_app(full), dry_run=False)
    producer = WatchProducer(full.cleanup, watcher, sender, RedisClaims(redis_client))
    producer.start_informers(stop)
    _until(lambda: watcher.synced, lambda: None)
    due = add(fake_kube, _old_job("due-now"))
    uid = due["metadata"]["uid"]

    def tick_and_resync() -> None:
        producer.tick()
        watcher.informers[0].resync()  # re-announce: the in-flight claim must dedupe

    _until(lambda: fake_kube.find(JOBS, "due-now", "team-a") is None, tick_and_resync, timeout=60)
    _until(lambda: not redis_client.exists(keys.cleanup_inflight(uid)), tick_and_resync, timeout=30)
    deletes = fake_kube.requests("delete", "jobs.batch")
    assert [(r.name, r.code, r.dry_run) for r in deletes if r.code == 200] == [
        ("due-now", 200, False)
    ]
    assert producer.sent >= 1
    assert not redis_client.exists(keys.cleanup_backoff(uid))


@pytest.mark.slow
def test_opsq_watch_command_serves_readiness_after_sync_and_deletes_due_jobs(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """The real `opsq watch --local --apply` process: /readyz, /metrics, deletion (and one
    log line saying so: it said nothing, hostile check F9), SIGTERM."""
    config = write_config(watch_timeout=5)
    log_path = tmp_path / "watch.log"
    env = {**os.environ, "OPSQ_CLEANUP__METRICS_PORT": "0", "OPSQ_CONFIG": str(config)}
    argv = [sys.executable, "-m", "opsq", "watch", "--local", "--apply",
            "--kubeconfig", str(kubeconfig_path())]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _until(lambda: "metrics on port" in log_path.read_text(), proc.poll, timeout=60)
        port = int(re.search(r"metrics on port (\d+)", log_path.read_text()).group(1))  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        _until(lambda: httpx.get(f"{base}/readyz").status_code == 200, lambda: None)
        add(fake_kube, _old_job("due"))
        _until(lambda: fake_kube.find(JOBS, "due", "team-a") is None, lambda: None)
        metrics = httpx.get(f"{base}/metrics").text
        assert 'opsq_kube_api_requests_total{code="200",verb="delete"} 1.0' in metrics
        assert 'opsq_informer_cache_objects{resource="batch/v1/jobs"}' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert re.search(
            r"INFO .*deleted batch/v1/jobs team-a/due \(rule finished-jobs: job-finished\)",
            log_path.read_text(),
        ), log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_send_that_fails_releases_the_claim_so_the_deferred_retry_sends_it(
    fake_kube: FakeKube,
    kube: Kube,
    redis_client: redis.Redis,
    running: tuple[threading.Event, list[WatchProducer]],
) -> None:
    """A broker blip between the in-flight claim and the send must not lose the object."""
    stop, _ = running
    cfg = settings(dry_run=False, watch_timeout=5)
    due = add(fake_kube, _old_job("blip"))
    uid = due["metadata"]["uid"]
    redis_client.delete(keys.cleanup_inflight(uid))
    watcher = Watcher(cfg, kube)
    sent: list[str] = []
    failures = iter([RedisUnavailable("broker down")])

    def send(target: Any, _countdown: float) -> None:
        if (exc := next(failures, None)) is not None:
            raise exc
        sent.append(target.uid)

    offset = [0.0]
    producer = WatchProducer(
        cfg, watcher, send, RedisClaims(redis_client), clock=lambda: time.time() + offset[0]
    )
    producer.start_informers(stop)
    _until(lambda: watcher.synced, lambda: None)
    assert producer.tick() == 0  # the send failed: deferred, not lost
    assert not redis_client.exists(keys.cleanup_inflight(uid))
    offset[0] = 60.0  # past the deferral
    assert producer.tick() == 1
    assert sent == [uid]
    redis_client.delete(keys.cleanup_inflight(uid))


class _CutStream:
    """A chunked watch body whose connection closed in the middle of an event."""

    def stream(self, amt: Any = None, decode_content: bool = True) -> Iterator[bytes]:
        yield b'{"type":"ADDED","object":{"metadata":{"name":"a"}}}\n{"type":"MODI'


def test_a_watch_stream_cut_mid_event_is_a_temporary_error_not_a_dead_informer() -> None:
    """A truncated last event must become ApiUnavailable (the informer backs off and
    re-watches); a bare ValueError would end the informer thread and freeze its cache."""
    events = _stream_lines(_CutStream())
    assert next(events)["type"] == "ADDED"
    with pytest.raises(ApiUnavailable, match="mid-event"):
        next(events)


def test_a_pod_of_an_active_job_in_the_informer_cache_is_never_due_even_with_owner_exists_allowed(
    fake_kube: FakeKube, kube: Kube, running: tuple[threading.Event, list[WatchProducer]]
) -> None:
    """LIST items carry no ``kind``: the cached owner must still be known as an active Job."""
    stop, _ = running
    pods_rule = {
        "name": "old-pods", "resource": "v1/pods", "when": {"older_than": "1h"},
        "delete_if_owner_exists": True,
    }  # fmt: skip
    cfg = settings([FINISHED_JOBS, pods_rule], watch_timeout=5)
    owner = add(fake_kube, job("busy", namespace="team-a", created=time.time() - DAY))
    add(fake_kube, pod("busy-x", namespace="team-a", created=time.time() - DAY, owner=owner),
        resource="v1/pods")  # fmt: skip
    watcher = Watcher(cfg, kube)
    producer = WatchProducer(cfg, watcher, lambda t, _c: None, NoClaims(), ahead=0.0)
    producer.start_informers(stop)
    _until(lambda: watcher.synced, lambda: None)
    assert watcher.informers[0].get_by_uid(owner["metadata"]["uid"]) is not None
    skipped = _skipped("v1/pods", "old-pods", "owner-active-job")
    assert producer.tick() == 0
    assert _skipped("v1/pods", "old-pods", "owner-active-job") == skipped + 1
    assert fake_kube.requests("get", "jobs.batch") == []  # answered from the cache


def _skipped(resource: str, rule: str, reason: str) -> float:
    labels = {"resource": resource, "rule": rule, "result": "skipped", "reason": reason}
    return REGISTRY.get_sample_value("opsq_cleanup_objects_total", labels) or 0.0


def test_in_process_watch_defers_an_object_while_the_api_answers_5xx_instead_of_crashing(
    fake_kube: FakeKube, kube: Kube, running: tuple[threading.Event, list[WatchProducer]]
) -> None:
    """``opsq watch --local``: a temporary API failure is a deferral, and the retry deletes."""
    stop, _ = running
    cfg = settings(dry_run=False, watch_timeout=5, retries=0)
    add(fake_kube, _old_job("flaky"))
    watcher = Watcher(cfg, kube)
    executor = Executor(kube, cfg)
    offset = [0.0]
    producer = WatchProducer(
        cfg, watcher, lambda t, _c: executor.execute(t, dry_run=False), NoClaims(),
        clock=lambda: time.time() + offset[0], ahead=0.0,
    )  # fmt: skip
    producer.start_informers(stop)
    _until(lambda: watcher.synced, lambda: None)
    fault = fake_kube.inject_fault(503, verb="delete", count=None, retry_after=0)
    assert producer.tick() == 0
    assert fault.hits == 1
    fake_kube.clear_faults()
    offset[0] = 60.0  # past the deferral
    assert producer.tick() == 1
    assert fake_kube.find(JOBS, "flaky", "team-a") is None


# The thread's own traceback is the point of this test, not a stray error.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_informer_thread_stops_the_watch_instead_of_serving_a_stale_cache(
    fake_kube: FakeKube, kube: Kube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error kills an informer thread: readiness turns false and run() exits."""
    cfg = settings([FINISHED_JOBS], watch_timeout=5)
    watcher = Watcher(cfg, kube)

    def broken_step(stop: threading.Event | None = None) -> None:
        raise RuntimeError("bug in an informer")

    monkeypatch.setattr(watcher.informers[0], "step", broken_step)
    producer = WatchProducer(cfg, watcher, lambda t, _c: None, NoClaims(), ahead=0.0)
    stop = threading.Event()
    with pytest.raises(TemporaryError, match="informer thread died"):
        producer.run(stop)
    assert stop.is_set()
    assert producer.informers_alive() is False
