"""Regressions found by the hostile check of the cleanup (notes/break-10.md, F1-F14).

Each test reproduces one finding against the fake API server (and real worker processes
where the finding was about them) and fails on the code before its fix.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from opsq.core import keys
from opsq.core.settings import load_settings
from opsq.engines.cleanup import planner
from opsq.engines.cleanup.executor import Executor, Target
from opsq.engines.cleanup.kube import Kube
from producers.cleanup import build_plan, celery_executor, target_of
from producers.probes import close_producer_app, producer_app
from tests.cleanup.conftest import JOBS, add, run_cli, settings
from tests.cleanup.objects import job
from tests.fakekube.server import FakeKube
from tests.support.tools import require_tool
from tests.support.workers import queue_length

DAY = 86400.0


def _old_job(name: str, namespace: str = "team-a", **meta: Any) -> dict[str, Any]:
    now = time.time()
    return job(name, namespace=namespace, created=now - DAY, finished=now - DAY / 2, **meta)


SELECTED = {"name": "labelled", "resource": JOBS, "when": {"finished": True, "older_than": "1h"}}


@pytest.mark.parametrize(
    ("selectors", "opt_out"),
    [
        ({"label_selector": "cleanup=yes"}, {"metadata": {"labels": {"cleanup": "no"}}}),
        ({"field_selector": "status.successful=1"}, {"status": {"succeeded": 0}}),
    ],
)
@pytest.mark.parametrize("verify_with_get", [False, True])
def test_an_object_that_left_the_rules_selector_after_the_plan_is_not_deleted(
    fake_kube: FakeKube,
    kube: Kube,
    selectors: dict[str, str],
    opt_out: dict[str, Any],
    verify_with_get: bool,
) -> None:
    """F1: the owner relabels the Job (or its status changes) between plan and DELETE. The
    409 re-plan (and verify_with_get's fresh read) must judge the rule's selectors too,
    not only its `when`: the Job no longer belongs to the rule and must survive."""
    add(fake_kube, _old_job("keepme", labels={"cleanup": "yes"}))
    fake_kube.patch(JOBS, "keepme", {"status": {"succeeded": 1}}, "team-a")
    cfg = settings([{**SELECTED, **selectors}], verify_with_get=verify_with_get)
    (item,) = build_plan(cfg, kube, time.time())[0]
    assert item.action == "delete"
    fake_kube.patch(JOBS, "keepme", opt_out, "team-a")
    outcome = Executor(kube, cfg).execute(target_of(item), dry_run=False)
    assert (outcome.result, outcome.reason) == ("skipped", planner.NOT_SELECTED)
    assert fake_kube.find(JOBS, "keepme", "team-a") is not None
    assert fake_kube.count("delete", "jobs.batch", 200) == 0


def test_an_object_still_selected_after_a_change_is_rejudged_and_deleted(
    fake_kube: FakeKube, kube: Kube
) -> None:
    """F1's control: a change that keeps the Job in the selector (another label) is a 409,
    a fresh read through the selector, and the deletion."""
    add(fake_kube, _old_job("goes", labels={"cleanup": "yes"}))
    cfg = settings([{**SELECTED, "label_selector": "cleanup=yes"}])
    (item,) = build_plan(cfg, kube, time.time())[0]
    fake_kube.patch(JOBS, "goes", {"metadata": {"labels": {"other": "x"}}}, "team-a")
    outcome = Executor(kube, cfg).execute(target_of(item), dry_run=False)
    assert (outcome.result, outcome.reason) == ("deleted", planner.JOB_FINISHED)
    assert fake_kube.count("delete", "jobs.batch", 409) == 1
    assert fake_kube.find(JOBS, "goes", "team-a") is None


@pytest.mark.parametrize("wait", ["inf", "nan", "0", "-5"])
def test_wait_must_be_a_positive_finite_number_of_seconds(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    wait: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """F2: `--wait inf|nan` crashed with a traceback after the plan; `--wait 0|-5` sent
    already-expired tasks and reported exit 0. A usage error (exit 2) before any request."""
    add(fake_kube, _old_job("j1"))
    argv = ["cleanup", "--apply", "--config", str(write_config()), "--wait", wait,
            "--kubeconfig", str(kubeconfig_path()), "--redis-url", redis_url]  # fmt: skip
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert "--wait" in err
    assert "positive number of seconds" in err
    assert "Traceback" not in err
    assert fake_kube.count() == 0
    assert queue_length(redis_url, keys.QUEUE_CLEANUP) == 0


def _clock_ahead(seconds: int) -> dict[str, str]:
    """Environment that runs a process with its clock *seconds* ahead (libfaketime)."""
    require_tool("faketime")
    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    assert libs, "libfaketime is installed with the faketime package"
    return {"LD_PRELOAD": libs[0], "FAKETIME": f"+{seconds}s"}


@pytest.mark.slow
def test_tasks_a_skewed_worker_finds_expired_are_failures_not_a_successful_run(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    start_worker: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """F3: a worker whose clock runs 10 minutes ahead takes every task of a `--wait 60` run
    as expired and runs none. Main reported them as skipped (`cancelled`) and exited 0,
    "everything planned was done"; planned deletions that never ran are failures."""
    for name in ("s0", "s1"):
        add(fake_kube, _old_job(name))
    kubeconfig, config = kubeconfig_path(), write_config()
    env = {"OPSQ_CONFIG": str(config), "OPSQ_CLEANUP__KUBECONFIG": str(kubeconfig)}
    start_worker(queues="cleanup", env={**env, **_clock_ahead(600)})
    argv = ["cleanup", "--apply", "--output", "json", "--config", str(config), "--wait", "60",
            "--kubeconfig", str(kubeconfig), "--redis-url", redis_url]  # fmt: skip
    code = run_cli(argv)
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [(e["name"], e["result"], e["reason"]) for e in report["errors"]] == [
        ("s0", "failed", "expired"), ("s1", "failed", "expired"),
    ]  # fmt: skip
    assert report["deleted"] == []
    assert fake_kube.count("delete", "jobs.batch") == 0


class _CtrlCWhileSending(list[Target]):
    """The targets of a run, with Ctrl-C arriving while the *after*-th task is sent."""

    def __init__(self, targets: list[Target], after: int) -> None:
        super().__init__(targets)
        self.after = after

    def __iter__(self) -> Iterator[Target]:
        for i, target in enumerate(super().__iter__()):
            if i == self.after:
                raise KeyboardInterrupt
            yield target


@pytest.mark.slow
def test_ctrl_c_while_the_tasks_are_sent_cancels_those_already_queued(
    fake_kube: FakeKube,
    kube: Kube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    cleanup_worker: Callable[..., Any],
) -> None:
    """F4: sending 5,000 tasks takes seconds, and Ctrl-C in that window printed "aborted"
    without cancelling: the tasks already queued deleted after the command had failed.
    Here 3 of 5 tasks are queued when Ctrl-C arrives (the worker's pool frozen so they
    wait); the command cancels them and says so; the resumed pool deletes nothing."""
    for i in range(5):
        add(fake_kube, _old_job(f"j{i}"))
    config = write_config()
    worker = cleanup_worker(config, kubeconfig_path())
    pool = worker.child_pids()
    plan, _ = build_plan(settings(), kube, time.time())
    targets = _CtrlCWhileSending([target_of(i) for i in plan], after=3)
    app = producer_app(load_settings(None, redis_url=redis_url))
    client = redis.Redis.from_url(redis_url)
    said: list[str] = []
    for pid in pool:
        os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(KeyboardInterrupt):
            celery_executor(app, client, timeout=120, announce=said.append)(targets, False)
    finally:
        for pid in pool:
            os.kill(pid, signal.SIGCONT)
    assert said == ["interrupted: cancelled 3 task(s) still queued; they will not run"]
    deadline = time.monotonic() + 30
    while worker.log().lower().count("succeeded") + worker.log().lower().count("revoked") < 3:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.1)
    assert fake_kube.count("delete", "jobs.batch") == 0
    assert len(fake_kube.list(JOBS, "team-a")) == 5
    client.close()
    close_producer_app(app)


def test_python_dash_m_opsq_keeps_the_exit_code_of_a_failed_cleanup(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
) -> None:
    """F15: `python -m opsq` (what `opsq up` starts its children with) dropped the code a
    command returns through ctx.exit: a run with errors[] exited 0 instead of 1."""
    add(fake_kube, _old_job("j1"))
    token = fake_kube.grant("nothing", [])
    argv = [sys.executable, "-m", "opsq", "cleanup", "--local", "--config", str(write_config()),
            "--kubeconfig", str(kubeconfig_path(token)), "--redis-url", redis_url]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert "forbidden: cannot list batch/v1/jobs" in done.stderr
