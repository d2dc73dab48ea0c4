"""Cluster-scoped kinds end to end with a worker: ephemeral PR namespaces with
`opsq.io/expires` (the most common kube-janitor use) and a cluster-scoped custom resource."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from opsq.cli.main import main
from opsq.core.config.cleanup import CleanupSettings
from tests.fakekube.server import FakeKube

NAMESPACES = "v1/namespaces"
SANDBOXES = "preview.example.com/v1/sandboxes"


def _cleanup_with_worker(
    fake: FakeKube,
    config: Path,
    kubeconfig: Path,
    redis_url: str,
    cleanup_worker: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> dict[str, Any]:
    cleanup_worker(config, kubeconfig)
    argv = ["cleanup", "--apply", "--output", "json", "--config", str(config),
            "--kubeconfig", str(kubeconfig), "--redis-url", redis_url, "--wait", "60"]  # fmt: skip
    assert not main(argv)
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert report["errors"] == []
    fake.settle()
    return report


@pytest.mark.slow
def test_expired_pr_namespaces_are_deleted_and_nothing_else(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    cleanup_worker: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """pr-1 expired (its content goes with it); pr-2 expires next year; pr-3 has no
    annotation; `default` would match a careless glob but is never deleted."""
    for name, expires in (("pr-1", "2020-01-01"), ("pr-2", "2999-01-01"), ("pr-3", None)):
        annotations = {"opsq.io/expires": expires} if expires else {}
        fake_kube.create(NAMESPACES, {"metadata": {"name": name, "annotations": annotations}})
    fake_kube.create("v1/configmaps", {"metadata": {"name": "cm"}}, namespace="pr-1")
    rules = [{"name": "pr-envs", "resource": NAMESPACES, "namespaces": {"include": ["pr-*"]},
              "when": {"ttl_annotation": True}}]  # fmt: skip
    report = _cleanup_with_worker(
        fake_kube, write_config(rules=rules), kubeconfig_path(), redis_url, cleanup_worker, capsys
    )
    assert [(d["name"], d["reason"]) for d in report["deleted"]] == [("pr-1", "expires-annotation")]
    assert fake_kube.find(NAMESPACES, "pr-1") is None
    assert fake_kube.find("v1/configmaps", "cm", "pr-1") is None
    assert fake_kube.find(NAMESPACES, "pr-2") is not None
    assert fake_kube.find(NAMESPACES, "pr-3") is not None
    assert fake_kube.find(NAMESPACES, "default") is not None


@pytest.mark.slow
def test_a_cluster_scoped_custom_resource_rule_end_to_end(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    cleanup_worker: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A CRD without namespaces, selected by a JMESPath over its spec and its age."""
    fake_kube.register_crd("preview.example.com", "v1", "sandboxes", "Sandbox", namespaced=False)
    for name, state, age in (("old-done", "Done", 7), ("old-live", "Live", 7), ("new", "Done", 0)):
        body = {"metadata": {"name": name, "creationTimestamp": fake_kube.ago(age * 86400)},
                "spec": {"state": state}}  # fmt: skip
        fake_kube.create(SANDBOXES, body)
    rules = [{"name": "sandboxes", "resource": SANDBOXES, "cluster_scoped": True,
              "when": {"match": "spec.state == 'Done'", "older_than": "1d"}}]  # fmt: skip
    report = _cleanup_with_worker(
        fake_kube, write_config(rules=rules), kubeconfig_path(), redis_url, cleanup_worker, capsys
    )
    assert [d["name"] for d in report["deleted"]] == ["old-done"]
    assert {s["name"] for s in report["skipped"]} == {"old-live", "new"}
    assert fake_kube.find(SANDBOXES, "old-done") is None
    assert fake_kube.find(SANDBOXES, "old-live") is not None


def test_cluster_scoped_rules_refuse_a_namespace_filter() -> None:
    """A namespace filter on PersistentVolumes cannot select anything: exit-2 material."""
    rule = {"name": "pvs", "resource": "v1/persistentvolumes",
            "namespaces": {"include": ["team-a"]}, "when": {"older_than": "1d"}}  # fmt: skip
    with pytest.raises(ValueError, match="cluster-scoped"):
        CleanupSettings.model_validate({"rules": [rule]})
