"""Several rules on one resource: every object is judged under every rule (defect 1),
and the one-shot and the informer agree on the plan whatever the order of the rules."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsq.cli.main import main
from opsq.core.config.cleanup import CleanupSettings
from opsq.engines.cleanup import planner
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.watcher import Watcher
from tests.cleanup.objects import job, pod
from tests.fakekube.server import FakeKube

HOUR = 3600.0
POD_RULES: list[dict[str, Any]] = [
    {"name": "evicted", "resource": "v1/pods", "when": {"evicted": True, "older_than": "5m"}},
    {"name": "pending", "resource": "v1/pods", "when": {"pending_longer_than": "15m"}},
    {
        "name": "succeeded",
        "resource": "v1/pods",
        "when": {"phase": ["Succeeded"], "older_than": "30m"},
    },
]


def test_oneshot_deletes_every_pod_that_any_rule_makes_due_like_the_watch(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The issue's example: evicted, pending 1h and succeeded 1h pods under three rules
    are all deleted by `opsq cleanup --apply --local` (main deleted only the evicted one)."""
    now = time.time()
    for obj in (
        pod("ev", phase="Failed", reason="Evicted", created=now - HOUR, ended=now - HOUR),
        pod("stuck", phase="Pending", created=now - HOUR),
        pod("done", phase="Succeeded", created=now - 2 * HOUR, ended=now - HOUR),
        pod("busy", phase="Running", created=now - HOUR),
    ):
        fake_kube.create("v1/pods", obj, namespace="default")
    config = write_config(rules=POD_RULES)
    code = main(
        ["cleanup", "--local", "--apply", "--output", "json", "--config", str(config),
         "--kubeconfig", str(kubeconfig_path())]
    )  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert not code
    deleted = {(d["name"], d["rule"]) for d in report["deleted"]}
    assert deleted == {("ev", "evicted"), ("stuck", "pending"), ("done", "succeeded")}
    assert [p["metadata"]["name"] for p in fake_kube.list("v1/pods", "default")] == ["busy"]
    (skip,) = report["skipped"]
    assert set(skip) == set(report["deleted"][0])  # one shape for every outcome (defect 8)


# --- property: one-shot plan == informer plan, any rule order --------------------------

NOW = 100 * HOUR
CONDITIONS = st.sampled_from(
    [
        {"evicted": True},
        {"evicted": True, "older_than": "5m"},
        {"pending_longer_than": "15m"},
        {"phase": ["Succeeded"], "older_than": "30m"},
        {"phase": ["Succeeded", "Failed"]},
        {"phase": ["Running"], "older_than": "2h"},
        {"older_than": "3h"},
        {"ttl_annotation": True},
        {"match": "metadata.labels.tier == 'batch'"},
    ]
)
JOB_CONDITIONS = st.sampled_from(
    [{"finished": True}, {"finished": True, "older_than": "1h"}, {"older_than": "5h"}]
)


@st.composite
def pods(draw: st.DrawFn, index: int) -> dict[str, Any]:
    phase = draw(st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]))
    created = NOW - draw(st.integers(0, 10)) * HOUR / 2
    ended = created + draw(st.integers(0, 4)) * 600 if phase in ("Succeeded", "Failed") else None
    extra: dict[str, Any] = {}
    if draw(st.booleans()):
        extra["labels"] = {"tier": draw(st.sampled_from(["batch", "web"]))}
    if draw(st.integers(0, 4)) == 0:
        extra["annotations"] = {"opsq.io/ttl": draw(st.sampled_from(["1h", "1w", "forever"]))}
    reason = "Evicted" if phase == "Failed" and draw(st.booleans()) else None
    return pod(f"p{index}", created=created, phase=phase, ended=ended, reason=reason, **extra)


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int]]:
    rules = [
        {"name": f"pods-{i}", "resource": "v1/pods", "when": draw(CONDITIONS)}
        for i in range(draw(st.integers(1, 5)))
    ]
    rules += [
        {"name": f"jobs-{i}", "resource": "batch/v1/jobs", "when": draw(JOB_CONDITIONS)}
        for i in range(draw(st.integers(0, 2)))
    ]
    objects = [draw(pods(i)) for i in range(draw(st.integers(1, 12)))]
    objects += [
        job(f"j{i}", created=NOW - 6 * HOUR, finished=draw(st.sampled_from([None, NOW - 2 * HOUR])))
        for i in range(draw(st.integers(0, 4)))
    ]
    order = draw(st.permutations(list(range(len(rules)))))
    return rules, objects, order


def _oneshot_plan(rules: list[dict[str, Any]], objects: list[dict[str, Any]]) -> dict[str, str]:
    cfg = CleanupSettings.model_validate({"rules": rules})
    per_rule = [
        (r, [o for o in objects if o["kind"] == ("Pod" if r.resource.plural == "pods" else "Job")])
        for r in cfg.rules
    ]
    items = planner.make_plan(
        per_rule, NOW, planner.Guards(owners=lambda ns, ref: planner.OwnerState.GONE),
        planner.Annotations.of(cfg),
    )  # fmt: skip
    return {i.uid: i.rule for i in items if i.action == "delete"}


def _watch_plan(
    rules: list[dict[str, Any]], objects: list[dict[str, Any]], kube: Kube
) -> dict[str, str]:
    cfg = CleanupSettings.model_validate({"rules": rules})
    watcher = Watcher(cfg, kube, clock=lambda: NOW)
    for informer in watcher.informers:  # what each informer's LIST would hold
        for obj in objects:
            if obj["kind"] == ("Pod" if informer.resource.plural == "pods" else "Job"):
                informer._put(obj)
    for rule in cfg.rules:
        for obj in objects:
            if obj["kind"] == ("Pod" if rule.resource.plural == "pods" else "Job"):
                watcher.on_object(rule, obj)
    return watcher.plan(NOW)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_oneshot_and_watch_give_the_same_plan_for_any_rule_order(
    case: tuple[list[dict[str, Any]], list[dict[str, Any]], list[int]],
) -> None:
    """For random objects and rules, the one-shot's deletions (object -> rule) equal the
    informer's, and neither depends on the order of the rules in the file."""
    rules, objects, order = case
    shuffled = [rules[i] for i in order]
    kube = Kube(api_client=None)  # never called: no object has owners
    oneshot = _oneshot_plan(rules, objects)
    assert _oneshot_plan(shuffled, objects) == oneshot
    assert _watch_plan(shuffled, objects, kube) == oneshot
    assert _watch_plan(rules, objects, kube) == oneshot
