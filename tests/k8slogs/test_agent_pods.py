"""The agent on a node's pod logs, with pod metadata from the fake API server.

Real CRI files under a kubelet-style ``pods`` directory, a real pod informer against
``tests/fakekube`` (unmodified ``kubernetes`` client), a real Redis stream: labels
reach the entries; a pod deleted while its lines are still being read ships them with
the identity from the path; an opted-out pod and an excluded namespace are not read;
with a 403 the lines ship without labels and the failure is counted and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from agents.agent import Agent
from agents.formats import split_framed
from opsq.core.logformat import decode
from opsq.core.metrics import logs_agent as metrics
from tests.fakekube.server import FakeKube
from tests.k8slogs.runtimes import Clock, CriWriter
from tests.logs_agent.conftest import STREAM, agent_settings, raw_client, run_agent, wait_for

__all__ = ["raw_client", "run_agent"]  # fixtures used below

T0 = 1_795_000_000 * 10**9


def add_pod(fake: FakeKube, namespace: str, name: str, **metadata: Any) -> str:
    obj = {
        "metadata": {"name": name, "namespace": namespace, **metadata},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running"},
    }
    return str(fake.create("v1/pods", obj, namespace=namespace)["metadata"]["uid"])


def write(pods: Path, namespace: str, name: str, uid: str, lines: list[bytes]) -> Path:
    log = pods / f"{namespace}_{name}_{uid}" / "app" / "0.log"
    writer = CriWriter(log, Clock(T0))
    writer.write("stdout", b"".join(line + b"\n" for line in lines))
    writer.close()
    return log


def entries(client: redis.Redis) -> list[tuple[dict[str, Any], list[bytes]]]:
    out = []
    for _, fields in client.xrange(STREAM):
        entry = decode(fields)
        out.append((entry.meta or {}, [split_framed(r)[2] for _, r in entry.records]))
    return out


def by_pod(client: redis.Redis) -> dict[str, list[tuple[dict[str, Any], bytes]]]:
    out: dict[str, list[tuple[dict[str, Any], bytes]]] = {}
    for meta, lines in entries(client):
        out.setdefault(meta.get("pod", "?"), []).extend((meta, line) for line in lines)
    return out


def settings(tmp_path: Path, kubeconfig: Path, **metadata: Any) -> Any:
    pods = tmp_path / "pods"
    return agent_settings(
        tmp_path,
        paths=[str(pods / "*/*/*.log")],
        format="auto",
        kubernetes={
            "pods_dir": str(pods),
            "node_name": "node-a",
            "namespaces": {"exclude": ["kube-*"]},
            "metadata": {"enabled": True, "kubeconfig": str(kubeconfig), "labels": ["app"],
                         "sync_timeout": 2, **metadata},
        },
    )  # fmt: skip


def test_labels_reach_entries_and_a_deleted_pod_keeps_its_path_identity(
    tmp_path: Path,
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    run_agent: Callable[..., Agent],
    raw_client: redis.Redis,
) -> None:
    """web's entries carry app=web; lines written after its deletion (keep_deleted 0)
    still ship, with namespace/pod/container/uid from the path and no labels; quiet
    (opted out) and kube-system (excluded namespace) are never read."""
    pods = tmp_path / "pods"
    web = add_pod(fake_kube, "shop", "web", labels={"app": "web"})
    quiet = add_pod(fake_kube, "shop", "quiet", annotations={"opsq.io/logs": "false"})
    system = add_pod(fake_kube, "kube-system", "dns", labels={"app": "dns"})
    log = write(pods, "shop", "web", web, [b"web 1", b"web 2"])
    write(pods, "shop", "quiet", quiet, [b"secret"])
    write(pods, "kube-system", "dns", system, [b"dns 1"])
    excluded = metrics.FILES_EXCLUDED.labels(reason="annotation")._value.get()
    agent = run_agent(settings(tmp_path, kubeconfig_path(), keep_deleted=0))
    wait_for(lambda: len(by_pod(raw_client).get("web", [])) == 2, what="web's lines")
    [(meta, _), _] = by_pod(raw_client)["web"]
    assert meta["labels"] == {"app": "web"}
    assert (meta["namespace"], meta["container"], meta["pod_uid"]) == ("shop", "app", web)
    assert meta["node"] == "node-a"

    fake_kube.delete("v1/pods", "web", namespace="shop", grace_period_seconds=0)
    wait_for(lambda: agent.pods.metadata is not None
             and agent.pods.metadata.informer.get_by_uid(web) is None, what="DELETED")  # fmt: skip
    writer = CriWriter(log, Clock(T0 + 10**9))
    writer.write("stdout", b"web after deletion\n")
    writer.close()
    wait_for(lambda: len(by_pod(raw_client)["web"]) == 3, what="the line after deletion")
    meta, line = by_pod(raw_client)["web"][-1]
    assert line == b"web after deletion"
    assert meta["pod_uid"] == web
    assert "labels" not in meta
    assert set(by_pod(raw_client)) == {"web"}, "quiet and kube-system were not read"
    assert metrics.FILES_EXCLUDED.labels(reason="annotation")._value.get() == excluded + 1


def test_a_403_leaves_lines_shipping_without_labels_counted_and_logged(
    tmp_path: Path,
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    run_agent: Callable[..., Agent],
    raw_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A token with no RBAC: every LIST is a 403; after sync_timeout the files are read
    anyway, entries carry the path identity only, and opsq_agent_metadata_errors_total
    {reason="forbidden"} and a WARNING naming the missing permission say why."""
    uid = add_pod(fake_kube, "shop", "web", labels={"app": "web"})
    write(tmp_path / "pods", "shop", "web", uid, [b"line 1", b"line 2"])
    token = fake_kube.service_account_token("opsq", "opsq-agent")
    before = metrics.METADATA_ERRORS.labels(reason="forbidden")._value.get()
    caplog.set_level(logging.WARNING, logger="agents.podmeta")
    run_agent(settings(tmp_path, kubeconfig_path(token), sync_timeout=1))
    wait_for(lambda: len(by_pod(raw_client).get("web", [])) == 2, what="lines without labels")
    for meta, _ in by_pod(raw_client)["web"]:
        assert meta["pod_uid"] == uid
        assert "labels" not in meta
    assert metrics.METADATA_ERRORS.labels(reason="forbidden")._value.get() > before
    assert any("forbidden" in r.getMessage() and "get, list, watch on pods" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_a_pod_annotated_while_its_file_is_read_stops_being_read(
    tmp_path: Path,
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    run_agent: Callable[..., Agent],
    raw_client: redis.Redis,
) -> None:
    """opsq.io/logs: "false" added to a running pod: its open file is released at the next
    discovery and what it writes afterwards is not shipped (other pods go on)."""
    pods = tmp_path / "pods"
    late = add_pod(fake_kube, "shop", "late")
    web = add_pod(fake_kube, "shop", "web")
    late_log = write(pods, "shop", "late", late, [b"before"])
    web_log = write(pods, "shop", "web", web, [b"web 1"])
    agent = run_agent(settings(tmp_path, kubeconfig_path()))
    wait_for(lambda: len(by_pod(raw_client).get("late", [])) == 1, what="late's first line")
    fake_kube.patch("v1/pods", "late", {"metadata": {"annotations": {"opsq.io/logs": "false"}}},
                    namespace="shop")  # fmt: skip
    wait_for(lambda: not any(t.path == str(late_log) for t in list(agent.tailers.values())),
             what="late's file released")  # fmt: skip
    for log, line in ((late_log, b"after opt-out"), (web_log, b"web 2")):
        writer = CriWriter(log, Clock(T0 + 10**9))
        writer.write("stdout", line + b"\n")
        writer.close()
    wait_for(lambda: len(by_pod(raw_client).get("web", [])) == 2, what="web's second line")
    assert [line for _, line in by_pod(raw_client)["late"]] == [b"before"]
    assert agent.pods.admit(str(late_log)) is False, "and discovery will not open it again"
