"""The planner's decisions on plain objects: what is due, when, and what is protected."""

from __future__ import annotations

from typing import Any

import pytest

from opsq.core.config.cleanup import Namespaces, Rule
from opsq.engines.cleanup import planner
from opsq.engines.cleanup.planner import OwnerState
from tests.cleanup.objects import job, pod

HOUR = 3600.0


def rule(**kwargs: Any) -> Rule:
    data = {"name": "r", "resource": "batch/v1/jobs", "when": {"older_than": "1h"}, **kwargs}
    return Rule.model_validate(data)


def _no_owner_lookup(namespace: str, ref: dict[str, Any]) -> OwnerState:
    raise AssertionError("owners must not be looked up for an object without owners")


no_owners = planner.Guards(owners=_no_owner_lookup)
TTL = planner.Annotations(("opsq.io/ttl",), ())


def test_finished_job_is_due_one_interval_after_completion_not_creation() -> None:
    r = rule(when={"finished": True, "older_than": "1h"})
    obj = job("j", created=0, finished=5000)
    decision = planner.evaluate(r, obj)
    assert decision.due_at == 5000 + HOUR
    assert decision.reason == planner.JOB_FINISHED
    assert planner.plan_object(r, obj, 5000 + HOUR - 1, no_owners).reason == planner.NOT_DUE_YET
    item = planner.plan_object(r, obj, 5000 + HOUR + 10, no_owners)
    assert (item.action, item.age) == ("delete", HOUR + 10)


def test_failed_job_counts_as_finished_from_its_transition_time() -> None:
    obj = job("j", created=0, finished=100, failed=True)
    assert planner.evaluate(rule(when={"finished": True}), obj).due_at == 100


def test_running_job_is_never_due_while_running() -> None:
    decision = planner.evaluate(rule(when={"finished": True, "older_than": 1}), job("j"))
    assert decision == planner.Decision(None, planner.NOT_FINISHED)


def test_pod_phase_rule_ages_from_container_end() -> None:
    r = rule(resource="v1/pods", when={"phase": ["Succeeded", "Failed"], "older_than": "30m"})
    assert planner.evaluate(r, pod("p", phase="Succeeded", ended=1000)).due_at == 1000 + 1800
    assert planner.evaluate(r, pod("p", phase="Running")).reason == planner.PHASE_MISMATCH


def test_evicted_and_pending_rules() -> None:
    evicted = rule(resource="v1/pods", when={"evicted": True})
    assert planner.evaluate(evicted, pod("p", phase="Failed", reason="Evicted")).reason == "evicted"
    assert planner.evaluate(evicted, pod("p", phase="Failed")).due_at is None
    pending = rule(resource="v1/pods", when={"pending_longer_than": "10m"})
    assert planner.evaluate(pending, pod("p", created=50, phase="Pending")).due_at == 650
    assert planner.evaluate(pending, pod("p", phase="Running")).reason == planner.NOT_PENDING


def test_ttl_annotation_makes_any_object_due_after_creation() -> None:
    r = rule(when={"finished": True})
    obj = job("j", created=100, annotations={"opsq.io/ttl": "2h"})
    decision = planner.evaluate(r, obj, TTL)
    assert (decision.due_at, decision.reason) == (100 + 2 * HOUR, planner.TTL_ANNOTATION)
    bad = job("j", annotations={"opsq.io/ttl": "soon"})
    assert planner.evaluate(r, bad, TTL).reason == planner.BAD_TTL


def test_terminating_object_is_reported_and_never_planned_for_deletion() -> None:
    obj = job("j", finished=0, deletionTimestamp="2024-01-01T00:00:00Z", finalizers=["x/y"])
    item = planner.plan_object(rule(when={"finished": True}), obj, 10 * HOUR, no_owners)
    assert (item.action, item.reason) == ("skip", planner.TERMINATING)


@pytest.mark.parametrize(
    ("state", "allow", "expected"),
    [
        (OwnerState.ACTIVE_JOB, True, planner.OWNER_ACTIVE_JOB),
        (OwnerState.ACTIVE_JOB, False, planner.OWNER_ACTIVE_JOB),
        (OwnerState.EXISTS, False, planner.OWNER_EXISTS),
        (OwnerState.UNKNOWN, False, planner.OWNER_UNVERIFIABLE),
        (OwnerState.EXISTS, True, None),
        (OwnerState.GONE, False, None),
    ],
)
def test_owner_guard(state: OwnerState, allow: bool, expected: str | None) -> None:
    owner = job("owner")
    obj = pod("p", phase="Succeeded", ended=0, owner=owner)
    r = rule(resource="v1/pods", when={"phase": ["Succeeded"]}, delete_if_owner_exists=allow)
    item = planner.plan_object(r, obj, HOUR, planner.Guards(owners=lambda ns, ref: state))
    assert item.reason == (expected or planner.POD_PHASE)
    assert item.action == ("skip" if expected else "delete")


def test_non_job_owner_is_not_looked_up_when_the_rule_allows_existing_owners() -> None:
    obj = pod("p", phase="Succeeded", ended=0)
    obj["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u"}
    ]
    r = rule(resource="v1/pods", when={"phase": ["Succeeded"]}, delete_if_owner_exists=True)
    assert planner.plan_object(r, obj, HOUR, no_owners).action == "delete"


def test_namespace_globs_and_where_to_list() -> None:
    spaces = Namespaces(include=["team-*", "ops"], exclude=["team-keep"])
    assert planner.namespace_selected("team-a", spaces)
    assert not planner.namespace_selected("team-keep", spaces)
    assert not planner.namespace_selected("default", spaces)
    assert planner.list_namespaces(rule(namespaces=spaces)) == [None]
    assert planner.list_namespaces(rule(namespaces={"include": ["a", "b", "a"]})) == ["a", "b"]


def test_plan_filters_namespaces_and_caps_deletions() -> None:
    r = rule(namespaces={"include": ["*"], "exclude": ["kube-system"]})
    objects = [job(f"j{i}", namespace="ns") for i in range(5)] + [
        job("sys", namespace="kube-system")
    ]
    items = planner.cap_deletions(planner.make_plan([(r, objects)], 2 * HOUR, no_owners), 3)
    assert len(items) == 5
    assert [i.action for i in items] == ["delete"] * 3 + ["skip"] * 2
    assert {i.reason for i in items[3:]} == {planner.MAX_DELETIONS}
