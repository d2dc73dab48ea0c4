"""The agent DaemonSet as the chart renders it (Helm's engine, Kubernetes' schemas).

Proves the Kubernetes-facing promises: the default config tails the kubelet's pod logs
with format auto, NODE_NAME comes from the downward API, host logs are mounted
read-only, the checkpoint hostPath gets its ownership fixed by a CAP_CHOWN-only init
container, and the pod-metadata RBAC is exactly get/list/watch on pods - checked both
as text and by loading it into the fake API server and using the agent's own token.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agents.podmeta import PodMetadata
from agents.podpath import PodIdentity
from opsq.core.config.cleanup import ResourceRef
from opsq.core.settings import load_settings
from opsq.engines.cleanup.kube import Forbidden, Kube, load_api_client
from tests.deploy.chart import find, render_chart
from tests.fakekube.server import FakeKube

KUBE_VERSION = "1.30.0"
POD_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render_chart({"agent": {"enabled": True}})


def daemonset_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, "DaemonSet", "opsq-agent")[0]["spec"]["template"]["spec"]
    return spec


def test_agent_objects_are_valid_kubernetes_objects(objects: list[dict[str, Any]]) -> None:
    """Strict validation (no unknown fields) of every agent object the chart renders."""
    agent = [o for o in objects if o["metadata"]["name"] == "opsq-agent"]
    assert {o["kind"] for o in agent} == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet",
    }  # fmt: skip
    for obj in agent:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_default_config_tails_pod_logs_with_format_auto_and_loads_in_opsq(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    """logs.agent from the chart: /var/log/pods/*/*/*.log (and rotated names), auto,
    .gz/.tmp excluded, metadata on; opsq's own settings validation accepts it."""
    path = tmp_path / "config.yaml"
    path.write_text(find(objects, "ConfigMap", "opsq-config")[0]["data"]["config.yaml"])
    agent = load_settings(path).logs.agent
    assert agent.paths[0] == "/var/log/pods/*/*/*.log"
    assert agent.format == "auto"
    assert {"*.gz", "*.tmp"} <= set(agent.exclude)
    assert agent.kubernetes.metadata.enabled is True
    user = render_chart({"agent": {"enabled": True},
                         "config": {"logs": {"agent": {"format": "cri"}}}})  # fmt: skip
    path.write_text(find(user, "ConfigMap", "opsq-config")[0]["data"]["config.yaml"])
    mine = load_settings(path).logs.agent
    assert (mine.format, mine.paths[0]) == ("cri", "/var/log/pods/*/*/*.log"), "user keys win"


def test_node_name_comes_from_the_downward_api(objects: list[dict[str, Any]]) -> None:
    """NODE_NAME = spec.nodeName: the informer's fieldSelector and the records' node."""
    env = {e["name"]: e for e in daemonset_spec(objects)["containers"][0]["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_host_logs_are_read_only_and_checkpoints_get_their_ownership_fixed(
    objects: list[dict[str, Any]],
) -> None:
    """Log hostPaths read-only; the checkpoint hostPath (DirectoryOrCreate: root 0755) is
    chowned to the agent's uid:gid by a root init container holding only CAP_CHOWN."""
    spec = daemonset_spec(objects)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["/var/log/pods"]["readOnly"] is True
    assert volumes[mounts["/var/log/pods"]["name"]]["hostPath"]["path"] == "/var/log/pods"
    assert volumes["checkpoints"]["hostPath"] == {
        "path": "/var/lib/opsq/agent",
        "type": "DirectoryOrCreate",
    }
    [init] = spec["initContainers"]
    pod_sc = spec["securityContext"]
    assert init["command"] == [
        "chown",
        f"{pod_sc['runAsUser']}:{pod_sc['runAsGroup']}",
        "/var/lib/opsq-agent",
    ]
    assert init["volumeMounts"] == [{"name": "checkpoints", "mountPath": "/var/lib/opsq-agent"}]
    sc = init["securityContext"]
    assert sc["runAsUser"] == 0
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    agent_sc = spec["containers"][0]["securityContext"]
    assert agent_sc["capabilities"] == {"drop": ["ALL"]}
    assert agent_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] != 0
    assert 0 in pod_sc["supplementalGroups"], "the root group reads root:root 0640 logs"


def test_metadata_rbac_is_exactly_get_list_watch_on_pods(objects: list[dict[str, Any]]) -> None:
    """The agent's ClusterRole grants get/list/watch on pods and nothing else, bound only
    to the agent's ServiceAccount; off without metadata (and no token mounted then)."""
    [role] = find(objects, "ClusterRole", "opsq-agent")
    assert role["rules"] == POD_RULES
    [binding] = find(objects, "ClusterRoleBinding", "opsq-agent")
    assert binding["roleRef"]["name"] == "opsq-agent"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "opsq-agent",
                                    "namespace": "opsq"}]  # fmt: skip
    assert daemonset_spec(objects)["automountServiceAccountToken"] is True
    no_metadata = {"kubernetes": {"metadata": {"enabled": False}}}
    off = render_chart({"agent": {"enabled": True, "config": no_metadata}})
    assert not find(off, "ClusterRole", "opsq-agent")
    assert daemonset_spec(off)["automountServiceAccountToken"] is False


@pytest.mark.parametrize("enabled", [True, False])
def test_rbac_follows_the_metadata_setting_the_agent_will_use(enabled: bool) -> None:
    """config.logs.agent wins over agent.config in the config file, so it decides the
    ClusterRole and the token too: metadata turned on there gets its RBAC, turned off
    there mounts no token and grants nothing."""

    def metadata(on: bool) -> dict[str, Any]:
        return {"kubernetes": {"metadata": {"enabled": on}}}

    values = {
        "agent": {"enabled": True, "config": metadata(not enabled)},
        "config": {"logs": {"agent": metadata(enabled)}},
    }
    objects = render_chart(values)
    config = yaml.safe_load(find(objects, "ConfigMap", "opsq-config")[0]["data"]["config.yaml"])
    assert config["logs"]["agent"]["kubernetes"]["metadata"]["enabled"] is enabled
    assert bool(find(objects, "ClusterRole", "opsq-agent")) is enabled
    assert bool(find(objects, "ClusterRoleBinding", "opsq-agent")) is enabled
    assert daemonset_spec(objects)["automountServiceAccountToken"] is enabled


def test_the_rendered_role_is_enough_for_the_informer_and_nothing_more(
    objects: list[dict[str, Any]], fake_kube: FakeKube, kubeconfig_path: Any
) -> None:
    """Loaded into the fake API server: the agent's token syncs the pod informer and
    gets labels; it cannot read secrets or delete pods."""
    rbac = [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")
            and o["metadata"]["name"] == "opsq-agent"]  # fmt: skip
    [(token, _user)] = fake_kube.load_rbac(yaml.safe_dump_all(rbac))
    created = fake_kube.create("v1/pods", {
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "a"}]},
    }, namespace="shop")  # fmt: skip
    uid = created["metadata"]["uid"]
    settings = load_settings(None).logs.agent.kubernetes
    client = load_api_client(str(kubeconfig_path(token)))
    meta = PodMetadata(settings, "node-a", client).start()
    try:
        deadline = time.monotonic() + 10
        while not meta.synced and time.monotonic() < deadline:
            time.sleep(0.02)
        assert meta.fields(PodIdentity("shop", "web", "app", uid))["labels"] == {"app": "web"}
    finally:
        meta.stop()
    kube = Kube(load_api_client(str(kubeconfig_path(token))))
    with pytest.raises(Forbidden):
        kube.list(ResourceRef(group="", version="v1", plural="secrets"), None, limit=1)
    with pytest.raises(Forbidden):
        kube.delete(ResourceRef(group="", version="v1", plural="pods"), "shop", "web",
                    uid=uid, resource_version=None, propagation_policy="Background",
                    grace_period_seconds=None, dry_run=False)  # fmt: skip
    kube.close()
