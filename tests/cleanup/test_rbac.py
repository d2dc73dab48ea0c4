"""Least-privilege RBAC: `opsq cleanup rbac` and the helm chart grant exactly what rules need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from opsq.cli.main import main
from opsq.core.config.cleanup import CleanupSettings
from opsq.engines.cleanup import rbac

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "opsq"

RULES: list[dict[str, Any]] = [
    {"name": "finished-jobs", "resource": "batch/v1/jobs", "when": {"finished": True}},
    {"name": "dead-pods", "resource": "v1/pods", "when": {"phase": ["Failed"]}},
    {"name": "evicted", "resource": "v1/pods", "when": {"evicted": True}},
    {"name": "workflows", "resource": "argoproj.io/v1alpha1/workflows", "when": {"older_than": 60}},
]
NEEDED = {
    (group, plural, verb)
    for group, plural in [("batch", "jobs"), ("", "pods"), ("argoproj.io", "workflows")]
    for verb in ("get", "list", "watch", "delete")
} | {  # the owners the owner guard GETs: a Job's CronJob, a Pod's controllers
    (group, plural, "get")
    for group, plural in [("batch", "cronjobs"), ("apps", "replicasets"),
                          ("apps", "statefulsets"), ("apps", "daemonsets"),
                          ("", "replicationcontrollers")]
}  # fmt: skip


def _rbac_output(tmp_path: Path, capsys: pytest.CaptureFixture[str], events: bool) -> list[Any]:
    path = tmp_path / "opsq.yaml"
    path.write_text(yaml.safe_dump({"cleanup": {"rules": RULES, "events": events}}))
    main(
        ["cleanup", "rbac", "--config", str(path), "--namespace", "ops", "--service-account", "sa"]
    )
    return list(yaml.safe_load_all(capsys.readouterr().out))


def test_rbac_command_grants_exactly_the_configured_resources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    role, binding = _rbac_output(tmp_path, capsys, events=False)
    assert role["kind"] == "ClusterRole"
    assert rbac.grants(role["rules"]) == NEEDED
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sa", "namespace": "ops"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_rbac_command_adds_event_creation_only_when_events_are_enabled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    role, _ = _rbac_output(tmp_path, capsys, events=True)
    assert rbac.grants(role["rules"]) == NEEDED | {("", "events", "create")}


def _roles(manifests: dict[str, str]) -> list[dict[str, Any]]:
    docs = [d for text in manifests.values() for d in yaml.safe_load_all(text) if d]
    return [d for d in docs if d.get("kind") in ("Role", "ClusterRole")]


def _chart_watcher_rules(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="opsq", namespace="ops", is_install=True)
    roles = [
        r
        for r in _roles(manifests)
        if rbac.grants(r.get("rules") or []) & {(g, p, "delete") for g, p, _ in NEEDED}
    ]
    assert len(roles) == 1, (
        f"expected one watcher Role in the chart, found {[r['metadata']['name'] for r in roles]}"
    )
    rules: list[dict[str, Any]] = roles[0]["rules"]
    return rules


PVC_RULE = {"name": "pvcs", "resource": "v1/persistentvolumeclaims", "when": {"unused": True}}
NOTIFYING = {**RULES[0], "name": "announced", "notify_before": "1h"}
ANY_OWNER = {**RULES[2], "name": "evicted-any-owner", "delete_if_owner_exists": True}


@pytest.mark.parametrize(
    ("rules", "events"),
    [(RULES, False), (RULES, True), ([*RULES, PVC_RULE], False), ([NOTIFYING, PVC_RULE], False),
     ([ANY_OWNER], False)],
)  # fmt: skip
def test_chart_watcher_role_grants_neither_more_nor_less_than_the_rules_need(
    rules: list[dict[str, Any]], events: bool
) -> None:
    """Fails when the chart's Role grants more (or less) than `opsq cleanup rbac` computes,
    PVC usage reads and heads-up Events included."""
    settings = CleanupSettings.model_validate({"rules": rules, "events": events})
    needed = rbac.grants(rbac.policy_rules(settings))
    granted = rbac.grants(_chart_watcher_rules({"cleanup": {"rules": rules, "events": events}}))
    assert granted - needed == set(), f"chart grants more than needed: {sorted(granted - needed)}"
    assert needed - granted == set(), f"chart grants less than needed: {sorted(needed - granted)}"


def test_namespaced_mode_needs_a_cluster_role_for_rules_that_list_all_namespaces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 4: a Role cannot grant a cluster-wide LIST, so globbed rules get a ClusterRole."""
    path = tmp_path / "opsq.yaml"
    path.write_text(yaml.safe_dump({"cleanup": {"rules": RULES}}))
    main(["cleanup", "rbac", "--config", str(path), "--namespaced"])
    role, binding = yaml.safe_load_all(capsys.readouterr().out)
    assert role["kind"] == "ClusterRole"
    assert "namespace" not in role["metadata"]
    assert (binding["kind"], binding["roleRef"]["kind"]) == ("ClusterRoleBinding", "ClusterRole")
    assert rbac.grants(role["rules"]) == NEEDED
