"""`opsq cleanup` without --local: the plan at once, no silent waits, and a command that
gave up never acts later (defect 2 and issue 8's "cleanup with no worker")."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

import producers.cleanup
from opsq.core import keys, signatures
from opsq.core.settings import load_settings
from producers.probes import close_producer_app, producer_app
from tests.cleanup.conftest import JOBS, add, run_cli
from tests.cleanup.objects import job
from tests.fakekube.server import FakeKube
from tests.support.workers import queue_length

DAY = 86400.0


def _old_job(name: str) -> dict[str, Any]:
    now = time.time()
    return job(name, namespace="team-a", created=now - DAY, finished=now - DAY / 2)


def test_no_worker_prints_the_plan_then_fails_fast_with_exit_3_and_queues_nothing(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Main waited silently for up to 600 s; now the plan is printed, the missing worker is
    detected within seconds, and the message names the queue and how to start a worker."""
    add(fake_kube, _old_job("j1"))
    argv = ["cleanup", "--apply", "--config", str(write_config()),
            "--kubeconfig", str(kubeconfig_path()), "--redis-url", redis_url]  # fmt: skip
    code = run_cli(argv)
    out, err = capsys.readouterr()
    assert code == 3
    assert "plan (apply)" in out
    assert "team-a/j1" in out
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "queue 'cleanup'" in line
    assert "celery -A tasks worker -Q cleanup" in line
    assert "Traceback" not in err
    assert queue_length(redis_url, keys.QUEUE_CLEANUP) == 0
    assert fake_kube.find(JOBS, "j1", "team-a") is not None


@pytest.mark.slow
def test_an_abandoned_apply_deletes_nothing_even_when_a_worker_starts_later(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    cleanup_worker: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker answered the broadcast, then died: the tasks stay queued, --wait runs out,
    the command cancels them and exits 1. A worker started afterwards deletes nothing."""
    add(fake_kube, _old_job("keep-me"))
    monkeypatch.setattr(producers.cleanup, "require_worker", lambda app, **kw: None)
    kubeconfig, config = kubeconfig_path(), write_config()
    argv = ["cleanup", "--apply", "--output", "json", "--config", str(config),
            "--kubeconfig", str(kubeconfig), "--redis-url", redis_url, "--wait", "2"]  # fmt: skip
    code = run_cli(argv)
    out, err = capsys.readouterr()
    assert code == 1
    assert [e["reason"] for e in json.loads(out)["errors"]] == ["timeout"]
    assert "cancelled 1 task(s) still queued; they will not run" in err
    assert queue_length(redis_url, keys.QUEUE_CLEANUP) == 1
    worker = cleanup_worker(config, kubeconfig)
    deadline = time.monotonic() + 30
    while queue_length(redis_url, keys.QUEUE_CLEANUP) and time.monotonic() < deadline:
        time.sleep(0.1)
    while "discarding revoked task" not in worker.log().lower() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "discarding revoked task" in worker.log().lower()  # expired: never run
    assert fake_kube.count("delete", "jobs.batch") == 0
    assert fake_kube.find(JOBS, "keep-me", "team-a") is not None


@pytest.mark.slow
def test_a_task_of_a_cancelled_batch_skips_on_the_worker_before_deleting(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    cleanup_worker: Callable[..., Any],
) -> None:
    """The check in the task (not only Celery's expires, which a task interrupted by
    Ctrl-C has not reached yet): a cancelled batch's task skips with reason cancelled."""
    created = add(fake_kube, _old_job("spared"))
    kubeconfig, config = kubeconfig_path(), write_config()
    cleanup_worker(config, kubeconfig)
    client = redis.Redis.from_url(redis_url)
    client.set(keys.cleanup_cancelled("b1"), "1", ex=600)
    app = producer_app(load_settings(None, redis_url=redis_url))
    md = created["metadata"]
    kwargs = {"rule": "finished-jobs", "resource": JOBS, "namespace": "team-a",
              "name": "spared", "uid": md["uid"], "dry_run": False,
              "resource_version": md["resourceVersion"], "batch": "b1",
              "deadline": time.time() + 600}  # fmt: skip
    outcome = app.send_task(signatures.CLEANUP_OBJECT, kwargs=kwargs).get(timeout=30)
    assert (outcome["result"], outcome["reason"]) == ("skipped", "cancelled")
    assert fake_kube.count("delete", "jobs.batch") == 0
    kwargs["batch"] = "b2"  # the control: the same task of a live batch deletes
    outcome = app.send_task(signatures.CLEANUP_OBJECT, kwargs=kwargs).get(timeout=30)
    assert outcome["result"] == "deleted"
    client.close()
    close_producer_app(app)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_or_sigterm_cancels_the_queued_tasks_so_a_resumed_worker_deletes_nothing(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    cleanup_worker: Callable[..., Any],
    tmp_path: Path,
    signum: signal.Signals,
    code: int,
) -> None:
    """Main printed "aborted" and left its tasks queued. The worker answers the broadcast
    but its pool is frozen (SIGSTOP), so the task waits; Ctrl-C cancels it; once the pool
    resumes, the task runs and deletes nothing. SIGTERM (`timeout 60 opsq cleanup`, a CI
    job's time limit, a stopped pod) did not cancel anything (hostile check F5): it must
    do the same as Ctrl-C."""
    add(fake_kube, _old_job("interrupted"))
    kubeconfig, config = kubeconfig_path(), write_config()
    worker = cleanup_worker(config, kubeconfig)
    pool = worker.child_pids()
    for pid in pool:
        os.kill(pid, signal.SIGSTOP)
    err_path = tmp_path / "cleanup.err"
    argv = [sys.executable, "-m", "opsq", "cleanup", "--apply", "--config", str(config),
            "--kubeconfig", str(kubeconfig), "--redis-url", redis_url, "--wait", "120"]  # fmt: skip
    try:
        with err_path.open("wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        while "waiting for 1 outcome" not in err_path.read_text():
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == code, err_path.read_text()
    finally:
        for pid in pool:
            os.kill(pid, signal.SIGCONT)
    text = err_path.read_text()
    assert "interrupted: cancelled 1 task(s) still queued; they will not run" in text
    assert "Traceback" not in text
    deadline = time.monotonic() + 30
    while not re.search(r"revoked|succeeded", worker.log(), re.IGNORECASE):
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.1)
    assert fake_kube.count("delete", "jobs.batch") == 0
    assert fake_kube.find(JOBS, "interrupted", "team-a") is not None
