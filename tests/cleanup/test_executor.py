"""The executor against the fake API server: preconditions, 404/409/403/429/5xx, events."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from opsq.engines.cleanup import planner
from opsq.engines.cleanup.executor import Executor, Target
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.owners import OwnerResolver
from opsq.engines.cleanup.planner import OwnerState
from producers.cleanup import build_plan, target_of
from tests.cleanup.conftest import JOBS, add, settings
from tests.cleanup.objects import job
from tests.fakekube.server import FakeKube

DAY = 86400.0


def _old_job(name: str, namespace: str = "team-a") -> dict:
    now = time.time()
    return job(name, namespace=namespace, created=now - DAY, finished=now - DAY / 2)


@pytest.mark.parametrize("verify_with_get", [False, True])
def test_job_recreated_with_the_same_name_between_plan_and_delete_survives(
    fake_kube: FakeKube, kube: Kube, verify_with_get: bool
) -> None:
    """The UID precondition: a plan made for the old Job never deletes its namesake."""
    add(fake_kube, _old_job("nightly"))
    cfg = settings(verify_with_get=verify_with_get)
    plan, errors = build_plan(cfg, kube, time.time())
    assert errors == []
    (item,) = plan
    assert item.action == "delete"
    fake_kube.delete(JOBS, "nightly", "team-a", propagation_policy="Background")
    fake_kube.settle()
    recreated = add(fake_kube, _old_job("nightly"))  # same name, new UID, also "due"
    outcome = Executor(kube, cfg).execute(target_of(item), dry_run=False)
    assert (outcome.result, outcome.reason) == ("skipped", planner.RECREATED)
    survivor = fake_kube.get(JOBS, "nightly", "team-a")
    assert survivor["metadata"]["uid"] == recreated["metadata"]["uid"]
    assert "deletionTimestamp" not in survivor["metadata"]


def test_object_changed_since_plan_is_rejudged_and_spared_when_no_longer_due(
    fake_kube: FakeKube, kube: Kube
) -> None:
    """409 on the resourceVersion precondition -> fresh GET -> rule re-evaluated."""
    add(fake_kube, _old_job("j"))
    cfg = settings()
    (item,) = build_plan(cfg, kube, time.time())[0]
    fake_kube.patch(JOBS, "j", {"metadata": {"annotations": {"opsq.io/ttl": "1000d"}}}, "team-a")
    outcome = Executor(kube, cfg).execute(target_of(item), dry_run=False)
    assert (outcome.result, outcome.reason) == ("skipped", planner.NOT_DUE_YET)
    assert fake_kube.count("delete", "jobs.batch", 409) == 1
    assert fake_kube.find(JOBS, "j", "team-a") is not None


def test_already_gone_is_success_not_failure(fake_kube: FakeKube, kube: Kube) -> None:
    add(fake_kube, _old_job("j"))
    cfg = settings()
    (item,) = build_plan(cfg, kube, time.time())[0]
    fake_kube.delete(JOBS, "j", "team-a", propagation_policy="Background")
    fake_kube.settle()
    outcome = Executor(kube, cfg).execute(target_of(item), dry_run=False)
    assert (outcome.result, outcome.reason) == ("skipped", planner.ALREADY_GONE)


def test_429_and_5xx_are_retried_with_backoff_honouring_retry_after(
    fake_kube: FakeKube, kube: Kube
) -> None:
    add(fake_kube, _old_job("j"))
    cfg = settings(retries=3)
    (item,) = build_plan(cfg, kube, time.time())[0]
    fake_kube.inject_fault(429, verb="delete", retry_after=2)
    fake_kube.inject_fault(503, verb="delete")
    slept: list[float] = []
    outcome = Executor(kube, cfg, sleep=slept.append).execute(target_of(item), dry_run=False)
    assert outcome.result == "deleted"
    assert len(slept) == 2
    assert slept[0] >= 2.0  # Retry-After: 2 from the 429
    assert fake_kube.find(JOBS, "j", "team-a") is None


def test_missing_delete_verb_is_a_permanent_error_naming_verb_resource_namespace(
    fake_kube: FakeKube, kubeconfig_path: Callable[..., Path]
) -> None:
    add(fake_kube, _old_job("j"))
    token = fake_kube.grant(
        "no-delete",
        [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"]}],
    )
    kube = Kube.connect(str(kubeconfig_path(token)))
    cfg = settings()
    (item,) = build_plan(cfg, kube, time.time())[0]
    slept: list[float] = []
    outcome = Executor(kube, cfg, sleep=slept.append).execute(target_of(item), dry_run=True)
    assert (outcome.result, outcome.reason) == ("failed", "forbidden")
    assert "cannot delete batch/v1/jobs in namespace 'team-a'" in outcome.message
    assert slept == []  # permanent: never retried
    assert fake_kube.count("delete", "jobs.batch", 403) == 1


def test_event_is_created_on_deletion_when_enabled(fake_kube: FakeKube, kube: Kube) -> None:
    add(fake_kube, _old_job("j"))
    cfg = settings(events=True)
    (item,) = build_plan(cfg, kube, time.time())[0]
    assert Executor(kube, cfg).execute(target_of(item), dry_run=False).result == "deleted"
    events = fake_kube.list("v1/events", "team-a")
    assert [e["reason"] for e in events] == ["OpsqCleanupDeleted"]
    assert events[0]["involvedObject"]["uid"] == item.uid


def test_a_rule_missing_from_the_workers_config_fails_clearly_without_any_request(
    fake_kube: FakeKube, kube: Kube
) -> None:
    target = Target("renamed-rule", JOBS, "team-a", "j", "uid-1", "7", "job-finished")
    outcome = Executor(kube, settings()).execute(target, dry_run=True)
    assert (outcome.result, outcome.reason) == ("failed", "unknown-rule")
    assert "renamed-rule" in outcome.message
    assert fake_kube.count() == 0


def test_a_discovery_failure_is_not_cached_so_the_custom_owner_resolves_once_the_api_answers(
    fake_kube: FakeKube, kube: Kube
) -> None:
    """A 503 on discovery makes the owner UNKNOWN for now, not for the process's life."""
    fake_kube.register_crd("example.com", "v1", "widgets", "Widget")
    widget = fake_kube.create(
        "example.com/v1/widgets",
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
        namespace="team-a",
    )
    ref = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w",
           "uid": widget["metadata"]["uid"]}  # fmt: skip
    resolver = OwnerResolver(kube)
    fault = fake_kube.inject_fault(503, path=r"^/apis/example\.com/v1/?$", retry_after=0)
    assert resolver("team-a", ref) is OwnerState.UNKNOWN
    assert fault.hits == 1
    assert resolver("team-a", ref) is OwnerState.EXISTS
