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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from opsq.core import keys
from opsq.core.settings import load_settings
from opsq.engines.cleanup import planner, rbac
from opsq.engines.cleanup.executor import Executor, Target
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.watcher import Watcher
from producers.cleanup import build_plan, celery_executor, target_of
from producers.probes import close_producer_app, producer_app
from producers.watch import NoClaims, WatchProducer
from tests.cleanup.conftest import JOBS, add, run_cli, settings
from tests.cleanup.objects import job, pod
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


ODD_MATCH = {"name": "odd", "resource": "v1/pods", "when": {"match": "metadata.labels.n > `3`"}}
DONE_PODS = {"name": "done", "resource": "v1/pods", "when": {"phase": ["Succeeded"]}}


def _odd_pod() -> dict[str, Any]:
    """A pod whose label is a string where the rule's `match` compares with a number
    (jmespath 1.1 raises Python's TypeError for it)."""
    now = time.time()
    return pod("odd", namespace="team-a", created=now - DAY, phase="Succeeded", ended=now - DAY,
               labels={"n": "7"})  # fmt: skip


def test_a_match_that_fails_on_one_object_skips_it_instead_of_ending_the_run(
    fake_kube: FakeKube, kube: Kube
) -> None:
    """F7, one-shot: the TypeError ended `opsq cleanup` with a traceback. Now the object
    is skipped as `match-error` under that rule, and the other rule still judges it."""
    add(fake_kube, _odd_pod(), "v1/pods")
    plan, errors = build_plan(settings([ODD_MATCH]), kube, time.time())
    assert errors == []
    assert [(i.name, i.action, i.reason) for i in plan] == [("odd", "skip", planner.MATCH_ERROR)]
    (item,) = build_plan(settings([ODD_MATCH, DONE_PODS]), kube, time.time())[0]
    assert (item.action, item.rule) == ("delete", "done")


def test_a_match_that_fails_on_one_object_does_not_kill_the_watch(
    fake_kube: FakeKube, kube: Kube
) -> None:
    """F7, watch: the TypeError escaped the informer's handler, the informer thread died and
    `opsq watch` exited 1 ("informer thread died"): in a pod, a crash loop caused by one
    object. Now the informer lives on and the other rule deletes the pod."""
    add(fake_kube, _odd_pod(), "v1/pods")
    cfg = settings([ODD_MATCH, DONE_PODS], dry_run=False)
    watcher = Watcher(cfg, kube)
    executor = Executor(kube, cfg)
    producer = WatchProducer(
        cfg, watcher, lambda t, _c: executor.execute(t, dry_run=False), NoClaims(), ahead=0.0
    )
    stop = threading.Event()
    threads = producer.start_informers(stop)
    try:
        deadline = time.monotonic() + 30
        while fake_kube.find("v1/pods", "odd", "team-a") is not None:
            assert all(t.is_alive() for t in threads), "an informer thread died"
            assert time.monotonic() < deadline
            producer.tick()
            time.sleep(0.05)
        assert all(t.is_alive() for t in threads)
    finally:
        stop.set()


def test_a_huge_retry_after_is_capped_at_the_backoff_cap(fake_kube: FakeKube, kube: Kube) -> None:
    """F13: `Retry-After: 3600` from an overloaded API server or a proxy made the one-shot
    sleep an hour per retry (five hours for one LIST). The wait is capped at backoff_cap."""
    add(fake_kube, _old_job("j"))
    cfg = settings(retries=2, backoff_cap="60s")
    (item,) = build_plan(cfg, kube, time.time())[0]
    fake_kube.inject_fault(429, verb="delete", retry_after=3600)
    slept: list[float] = []
    outcome = Executor(kube, cfg, sleep=slept.append).execute(target_of(item), dry_run=False)
    assert outcome.result == "deleted"
    assert len(slept) == 1
    assert slept[0] == 60.0  # honoured (>= the base backoff), but no longer than the cap


def test_local_apply_stops_once_the_api_server_is_down_and_exits_3(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """F6: with the API server answering 503 to every DELETE, `--local --apply` took each
    remaining object through its full retries (about 10 s each: hours for thousands) and
    ended with exit 1. After 3 objects in a row it stops: the rest are not attempted, the
    report says so, exit 3."""
    for i in range(8):
        add(fake_kube, _old_job(f"j{i}"))
    fake_kube.inject_fault(503, verb="delete", count=None)
    config = write_config(retries=1, backoff_base="0s")
    argv = ["cleanup", "--apply", "--local", "--output", "json", "--config", str(config),
            "--kubeconfig", str(kubeconfig_path()), "--redis-url", redis_url]  # fmt: skip
    code = run_cli(argv)
    out, err = capsys.readouterr()
    reasons = [e["reason"] for e in json.loads(out)["errors"]]
    assert code == 3
    assert reasons == ["unavailable"] * 3 + ["not-attempted"] * 5
    assert fake_kube.count("delete", "jobs.batch") == 3 * 2  # 3 objects, 2 attempts each
    assert "the API server stopped answering: 5 object(s) not attempted" in err
    assert "Traceback" not in err


def test_the_audit_listing_survives_odd_entries_and_a_since_longer_than_the_epoch(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """F11: an entry without the usual fields (another writer's, a future version's) ended
    the table with a KeyError traceback; `--since 36500d` asked Redis for a negative
    stream ID and failed as "a bug in opsq". Both now list what is there."""
    add(fake_kube, _old_job("audited"))
    base = ["--config", str(write_config()), "--kubeconfig", str(kubeconfig_path())]
    assert run_cli(["cleanup", "--local", "--apply", *base]) == 0
    client = redis.Redis.from_url(redis_url)
    client.xadd(keys.cleanup_audit(), {"foo": "bar"})
    client.xadd(keys.cleanup_audit(), {"deleted_at": "soon", "name": "x", "rule": "r"})
    client.close()
    capsys.readouterr()
    assert run_cli(["cleanup", "audit", "--since", "36500d"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3
    assert "finished-jobs  batch/v1/jobs  team-a/audited" in lines[0]
    assert lines[1].startswith("-  -  -  -  uid=-")
    assert lines[2].startswith("soon  r  -  x  uid=-")
    assert "3 deletion(s) in the last 36500d" in err
    assert "Traceback" not in err


def test_a_named_namespace_that_exclude_removes_is_neither_listed_nor_granted(
    fake_kube: FakeKube, kube: Kube
) -> None:
    """F12: `include: [team-a, team-b], exclude: [team-b]` listed team-b and `opsq cleanup
    rbac --namespaced` gave a Role there with delete on jobs that nothing ever used."""
    rule = {**SELECTED, "namespaces": {"include": ["team-a", "team-b"], "exclude": ["team-*b"]}}
    cfg = settings([rule], events=True)
    add(fake_kube, _old_job("a1"))
    add(fake_kube, _old_job("b1", namespace="team-b"))
    plan, _ = build_plan(cfg, kube, time.time())
    assert [(i.namespace, i.action) for i in plan] == [("team-a", "delete")]
    assert {r.namespace for r in fake_kube.requests("list", "jobs.batch")} == {"team-a"}
    docs = rbac.manifests(cfg, service_account="opsq", namespace="ops", namespaced=True)
    assert [(d["kind"], d["metadata"].get("namespace")) for d in docs] == [
        ("Role", "team-a"), ("RoleBinding", "team-a"),
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["apps/v1/daemonsets", "apps/v1/replicasets"])
def test_a_claim_of_a_daemonset_or_replicaset_without_pods_is_in_use(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    kind: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """F10: a DaemonSet on a node pool scaled to zero (or a ReplicaSet scaled to 0) has no
    pods, and only pods, Deployments, StatefulSets, Jobs and CronJobs counted as users:
    its claim was deleted as unused."""
    pvcs = "v1/persistentvolumeclaims"
    claim = {"metadata": {"name": "shared", "creationTimestamp": fake_kube.ago(2 * DAY)},
             "spec": {"accessModes": ["ReadWriteMany"]}, "status": {"phase": "Bound"}}  # fmt: skip
    fake_kube.create(pvcs, claim, namespace="team-a")
    volume = {"name": "v", "persistentVolumeClaim": {"claimName": "shared"}}
    spec = {"nodeSelector": {"pool": "gpu"}, "volumes": [volume],
            "containers": [{"name": "c", "image": "busybox"}]}  # fmt: skip
    owner = {"metadata": {"name": "agent"}, "spec": {"replicas": 0, "template": {"spec": spec}}}
    fake_kube.create(kind, owner, namespace="team-a")
    rule = {"name": "unused", "resource": pvcs, "when": {"unused": True, "older_than": "1d"}}
    argv = ["cleanup", "--local", "--apply", "--output", "json", "--redis-url", redis_url,
            "--config", str(write_config(rules=[rule])),
            "--kubeconfig", str(kubeconfig_path())]  # fmt: skip
    assert run_cli(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["reason"]) for s in report["skipped"]] == [("shared", planner.PVC_IN_USE)]
    assert fake_kube.find(pvcs, "shared", "team-a") is not None


def test_rejected_credentials_are_one_line_with_the_fix_and_exit_3(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """F14: an expired token gave `HTTP 401: Unauthorized` per rule and exit 1 ("some
    objects failed"), with no fix. Now: one line naming the cause and the fix, exit 3."""
    add(fake_kube, _old_job("j1"))
    argv = ["cleanup", "--local", "--config", str(write_config()),
            "--kubeconfig", str(kubeconfig_path("expired-token"))]  # fmt: skip
    assert run_cli(argv) == 3
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    assert "rejected the credentials (HTTP 401" in line
    assert "fix: refresh the token" in line
    assert fake_kube.count("list", code=401) == 1  # not retried: it cannot get better


def test_rbac_grants_the_owner_guards_lookups_and_only_a_job_with_any_owner_allowed() -> None:
    """F16: `opsq cleanup rbac` granted no GET on owners that no rule lists, so under it
    every Job-owned Pod was `owner-unverifiable`, even for `delete_if_owner_exists: true`
    rules (which look up only a Job, to see whether it is still active)."""
    evicted = {"name": "evicted", "resource": "v1/pods", "when": {"evicted": True}}
    granted = rbac.grants(rbac.policy_rules(settings([evicted])))
    owners = {(g, p) for g, p, v in granted if v == "get" and p != "pods"}
    assert owners == {("batch", "jobs"), ("apps", "replicasets"), ("apps", "statefulsets"),
                      ("apps", "daemonsets"), ("", "replicationcontrollers")}  # fmt: skip
    any_owner = rbac.grants(
        rbac.policy_rules(settings([{**evicted, "delete_if_owner_exists": True}]))
    )
    assert {(g, p) for g, p, v in any_owner if p != "pods"} == {("batch", "jobs")}
