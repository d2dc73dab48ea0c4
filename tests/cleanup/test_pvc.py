"""PersistentVolumeClaims: only unused claims are deleted (defect 3, kube-janitor parity)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import producers.cleanup as oneshot
from opsq.core.config.cleanup import CleanupSettings
from opsq.engines.cleanup import planner, usage
from tests.cleanup.conftest import run_cli
from tests.fakekube.server import FakeKube

PVCS = "v1/persistentvolumeclaims"
DAY = 86400.0
UNUSED_RULE = {
    "name": "unused-pvcs",
    "resource": PVCS,
    "when": {"unused": True, "older_than": "1d"},
}


def _claim(fake: FakeKube, name: str, namespace: str = "team-a") -> dict[str, Any]:
    body = {"metadata": {"name": name, "creationTimestamp": fake.ago(2 * DAY)},
            "spec": {"accessModes": ["ReadWriteOnce"]}, "status": {"phase": "Bound"}}  # fmt: skip
    return fake.create(PVCS, body, namespace=namespace)


def _mounting_pod(fake: FakeKube, name: str, claim: str, namespace: str = "team-a") -> None:
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": claim}}
    body = {"metadata": {"name": name}, "status": {"phase": "Running"},
            "spec": {"nodeName": "n1", "volumes": [volume],
                     "containers": [{"name": "c", "image": "busybox"}]}}  # fmt: skip
    fake.create("v1/pods", body, namespace=namespace)


def _statefulset(fake: FakeKube, name: str, template: str, namespace: str = "team-a") -> None:
    body = {"metadata": {"name": name},
            "spec": {"volumeClaimTemplates": [{"metadata": {"name": template}}],
                     "template": {"spec": {"containers": [{"name": "c"}]}}}}  # fmt: skip
    fake.create("apps/v1/statefulsets", body, namespace=namespace)


def test_a_pvc_rule_without_unused_is_refused_at_start_with_exit_2(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Main deleted a Bound PVC mounted by a Running pod under `older_than: 1d`."""
    config = write_config(rules=[{"name": "old", "resource": PVCS, "when": {"older_than": "1d"}}])
    assert run_cli(["cleanup", "--local", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "rules[0] (name 'old')" in err
    assert "unused: true" in err
    assert "force: true" in err
    forced = {"name": "old", "resource": PVCS, "when": {"older_than": "1d"}, "force": True}
    CleanupSettings.model_validate({"rules": [forced]})  # the escape hatch is accepted


def test_usage_index_sees_pods_workload_templates_and_statefulset_claims() -> None:
    """What counts as use: a pod (any phase), a pod template, a StatefulSet's claim name."""
    deploy = {"metadata": {"name": "web", "namespace": "ns"},
              "spec": {"template": {"spec": {"volumes": [
                  {"name": "v", "persistentVolumeClaim": {"claimName": "shared"}}]}}}}  # fmt: skip
    sts = {
        "metadata": {"name": "db", "namespace": "ns"},
        "spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}}]},
    }
    index = usage.index_of(
        [usage.reducer(usage.REFERRERS[2])(deploy), usage.reducer(usage.REFERRERS[1])(sts)]
    )
    assert index("ns", "shared") is planner.UsageState.IN_USE
    assert index("ns", "data-db-0") is planner.UsageState.IN_USE
    assert index("ns", "data-db-x") is planner.UsageState.UNUSED
    assert index("other", "shared") is planner.UsageState.UNUSED
    index.unknown.add("ns")
    assert index("ns", "lonely") is planner.UsageState.UNKNOWN


@pytest.mark.slow
def test_only_the_unused_claim_is_deleted_end_to_end_with_a_worker(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    cleanup_worker: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A claim mounted by a running pod and one a StatefulSet would claim again are kept;
    the unused one is deleted by a real worker and goes once pvc-protection lets it."""
    for name in ("mounted", "data-db-0", "orphan"):
        _claim(fake_kube, name)
    _mounting_pod(fake_kube, "app", "mounted")
    _statefulset(fake_kube, "db", "data")
    kubeconfig, config = kubeconfig_path(), write_config(rules=[UNUSED_RULE])
    cleanup_worker(config, kubeconfig)
    argv = ["cleanup", "--apply", "--output", "json", "--config", str(config),
            "--kubeconfig", str(kubeconfig), "--redis-url", redis_url, "--wait", "60"]  # fmt: skip
    assert run_cli(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in report["deleted"]] == ["orphan"]
    assert {(s["name"], s["reason"]) for s in report["skipped"]} == {
        ("mounted", planner.PVC_IN_USE),
        ("data-db-0", planner.PVC_IN_USE),
    }
    fake_kube.settle()
    assert fake_kube.find(PVCS, "orphan", "team-a") is None
    assert fake_kube.find(PVCS, "mounted", "team-a") is not None
    assert fake_kube.count("delete", "persistentvolumeclaims") == 1


def test_the_worker_looks_again_and_spares_a_claim_mounted_since_the_plan(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plan is a snapshot: a pod that mounts the claim after the LIST keeps it alive,
    because the executor asks for live usage right before the DELETE."""
    _claim(fake_kube, "late")
    real = oneshot.build_plan

    def plan_then_mount(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        _mounting_pod(fake_kube, "newcomer", "late")
        return result

    monkeypatch.setattr(oneshot, "build_plan", plan_then_mount)
    config = write_config(rules=[UNUSED_RULE])
    argv = ["cleanup", "--local", "--apply", "--output", "json", "--config", str(config),
            "--kubeconfig", str(kubeconfig_path())]  # fmt: skip
    assert run_cli(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["deleted"] == []
    assert [(s["name"], s["reason"]) for s in report["skipped"]] == [("late", planner.PVC_IN_USE)]
    assert fake_kube.count("delete", "persistentvolumeclaims") == 0
