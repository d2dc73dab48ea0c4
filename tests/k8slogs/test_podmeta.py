"""Pod metadata from a node-local informer, against the fake API server.

The informer is the cleanup engine's, talking to ``tests/fakekube`` through the
unmodified ``kubernetes`` client; these tests prove what the agent gets from it:
labels, owner, the node filter, deleted pods, the opt-out annotation and a 403.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.podmeta import PodMetadata, owner_of
from agents.podpath import PodIdentity
from agents.pods import Verdict, namespace_allowed, record_meta
from opsq.core.config.logs import KubernetesSettings
from opsq.core.metrics import logs_agent as metrics
from opsq.engines.cleanup.kube import load_api_client
from tests.fakekube.server import FakeKube

WEB = "web-5d8f9c7b6-abcde"


def add_pod(fake: FakeKube, name: str, node: str = "node-a", **metadata: Any) -> str:
    """Create a running pod on *node*; returns the uid the API server gave it."""
    obj = {
        "metadata": {"name": name, "namespace": "shop", **metadata},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running"},
    }
    return str(fake.create("v1/pods", obj, namespace="shop")["metadata"]["uid"])


def wait(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def start_meta(
    kubeconfig_path: Callable[..., Path],
) -> Iterator[Callable[..., PodMetadata]]:
    started: list[PodMetadata] = []

    def _start(token: str | None = None, **metadata: Any) -> PodMetadata:
        settings = KubernetesSettings.model_validate({"metadata": {"enabled": True, **metadata}})
        path = kubeconfig_path(token) if token else kubeconfig_path()
        meta = PodMetadata(settings, "node-a", load_api_client(str(path))).start()
        started.append(meta)
        return meta

    yield _start
    for meta in started:
        meta.stop()


def web_identity(uid: str) -> PodIdentity:
    return PodIdentity("shop", WEB, "app", uid, 0)


def test_labels_and_the_deployment_appear_for_this_nodes_pods_only(
    fake_kube: FakeKube, start_meta: Callable[..., PodMetadata]
) -> None:
    """Labels (chosen by glob), the Deployment behind the ReplicaSet, and no other node's pods."""
    uid = add_pod(
        fake_kube, WEB,
        labels={"app": "web", "pod-template-hash": "5d8f9c7b6", "team": "shop"},
        annotations={"note": "x"},
        ownerReferences=[{"apiVersion": "apps/v1", "kind": "ReplicaSet", "controller": True,
                          "name": "web-5d8f9c7b6", "uid": "rs-uid"}],
    )  # fmt: skip
    add_pod(fake_kube, "elsewhere", "node-b")
    meta = start_meta(labels=["app", "team"], annotations=["note"])
    wait(lambda: meta.synced, "the first LIST")
    assert meta.fields(web_identity(uid)) == {
        "labels": {"app": "web", "team": "shop"},
        "annotations": {"note": "x"},
        "owner": {"kind": "Deployment", "name": "web"},
    }
    assert len(meta.informer) == 1, "the fieldSelector keeps other nodes' pods out"
    lists = fake_kube.requests(verb="list", resource="pods")
    assert lists
    assert all("spec.nodeName=node-a" in r.query.get("fieldSelector", "") for r in lists)


def test_a_pod_created_later_arrives_by_watch_without_a_request_per_line(
    fake_kube: FakeKube, start_meta: Callable[..., PodMetadata]
) -> None:
    """After the first LIST, new pods come from the WATCH; lookups make no requests."""
    meta = start_meta()
    wait(lambda: meta.synced, "the first LIST")
    uid = add_pod(fake_kube, WEB, labels={"app": "web"})
    wait(lambda: meta.fields(web_identity(uid)).get("labels") == {"app": "web"}, "the watch")
    before = len(fake_kube.requests())
    for _ in range(1000):
        meta.fields(web_identity(uid))
    assert len(fake_kube.requests()) == before


def test_a_deleted_pods_metadata_is_kept_for_keep_deleted_then_dropped(
    fake_kube: FakeKube, start_meta: Callable[..., PodMetadata]
) -> None:
    """Lines still being read after a deletion keep their labels for a while, then ship
    with the identity from their path only."""
    uid = add_pod(fake_kube, WEB, labels={"app": "web"})
    meta = start_meta(keep_deleted=0.5)
    wait(lambda: meta.synced, "the first LIST")
    fake_kube.delete("v1/pods", WEB, namespace="shop", grace_period_seconds=0)
    wait(lambda: meta.informer.get_by_uid(uid) is None, "the DELETED event")
    assert meta.fields(web_identity(uid)).get("labels") == {"app": "web"}
    wait(lambda: meta.fields(web_identity(uid)) == {}, "keep_deleted to pass")
    entry = record_meta(web_identity(uid), "node-a", meta.fields(web_identity(uid)))
    assert entry == (
        b'{"namespace":"shop","pod":"web-5d8f9c7b6-abcde","container":"app",'
        b'"pod_uid":"' + uid.encode() + b'","restart":0,"node":"node-a"}'
    )


def test_the_opt_out_annotation_skips_a_pod_and_unknown_pods_wait_briefly(
    fake_kube: FakeKube, start_meta: Callable[..., PodMetadata]
) -> None:
    """opsq.io/logs: "false" -> SKIP; a pod the cache does not know yet -> WAIT, then READ."""
    quiet = add_pod(fake_kube, "quiet", annotations={"opsq.io/logs": "false"})
    meta = start_meta(pod_wait=0.3)
    wait(lambda: meta.synced, "the first LIST")
    assert meta.admit(PodIdentity("shop", "quiet", "app", quiet), time.monotonic()) is Verdict.SKIP
    unknown = PodIdentity("shop", "new", "app", "n-uid")
    first_seen = time.monotonic()
    assert meta.admit(unknown, first_seen) is Verdict.WAIT
    wait(lambda: meta.admit(unknown, first_seen) is Verdict.READ, "pod_wait to pass")


def test_a_403_is_counted_and_logged_and_files_are_read_without_labels(
    fake_kube: FakeKube, start_meta: Callable[..., PodMetadata], caplog: pytest.LogCaptureFixture
) -> None:
    """No RBAC grant: LIST answers 403; files are read after sync_timeout, without labels,
    every failure is counted, and the log says which permission is missing."""
    uid = add_pod(fake_kube, WEB, labels={"app": "web"})
    token = fake_kube.service_account_token("opsq", "opsq-agent")
    before = metrics.METADATA_ERRORS.labels(reason="forbidden")._value.get()
    caplog.set_level(logging.WARNING, logger="agents.podmeta")
    meta = start_meta(token, sync_timeout=0.5)
    wait(lambda: metrics.METADATA_ERRORS.labels(reason="forbidden")._value.get() > before,
         "a counted 403")  # fmt: skip
    assert meta.admit(web_identity(uid), time.monotonic()) is Verdict.WAIT
    wait(lambda: meta.admit(web_identity(uid), time.monotonic()) is Verdict.READ, "sync_timeout")
    assert meta.fields(web_identity(uid)) == {}
    assert any("get, list, watch on pods" in r.getMessage() for r in caplog.records)


def test_owner_and_namespace_rules() -> None:
    """A plain ReplicaSet, a StatefulSet and no owner; include/exclude globs."""
    rs = {"ownerReferences": [{"kind": "ReplicaSet", "name": "batch-rs", "controller": True}]}
    assert owner_of(rs) == {"kind": "ReplicaSet", "name": "batch-rs"}
    sts = {"ownerReferences": [{"kind": "StatefulSet", "name": "db", "controller": True}]}
    assert owner_of(sts) == {"kind": "StatefulSet", "name": "db"}
    assert owner_of({}) is None
    rules = KubernetesSettings.model_validate(
        {"namespaces": {"include": ["shop*", "kube-*"], "exclude": ["kube-system"]}}
    )
    assert namespace_allowed("shop-eu", rules)
    assert namespace_allowed("kube-public", rules)
    assert not namespace_allowed("kube-system", rules)
    assert not namespace_allowed("default", rules)


MIRROR = "kubernetes.io/config.mirror"


def test_a_static_pod_is_found_by_its_mirror_annotation(
    fake_kube: FakeKube, start_meta: Callable[..., PodMetadata]
) -> None:
    """The kubelet names a static pod's log directory after its own UID (the config
    hash), which the API's mirror pod carries as ``kubernetes.io/config.mirror``: labels
    and the opt-out annotation apply to it; a pod that only shares the name does not."""
    config_hash = "3b0c1f5c8d2e4a6b9c7d1e2f3a4b5c6d"
    add_pod(fake_kube, "etcd-node-a", labels={"component": "etcd"},
            annotations={MIRROR: config_hash})  # fmt: skip
    add_pod(fake_kube, "quiet-node-a", annotations={MIRROR: "0" * 32, "opsq.io/logs": "false"})
    add_pod(fake_kube, "named-alike", labels={"component": "other"})
    meta = start_meta()
    wait(lambda: meta.synced, "the first LIST")
    etcd = PodIdentity("shop", "etcd-node-a", "etcd", config_hash, 0)
    assert meta.fields(etcd)["labels"] == {"component": "etcd"}
    assert meta.admit(etcd, time.monotonic()) is Verdict.READ
    quiet = PodIdentity("shop", "quiet-node-a", "app", "0" * 32, 0)
    assert meta.admit(quiet, time.monotonic()) is Verdict.SKIP
    stale = PodIdentity("shop", "named-alike", "app", "f" * 32, 0)
    assert meta.fields(stale) == {}, "same name, other uid: an older pod of that name"
    fake_kube.delete("v1/pods", "etcd-node-a", namespace="shop", grace_period_seconds=0)
    wait(lambda: meta.informer.get("shop", "etcd-node-a") is None, "the mirror pod's DELETED")
    assert meta.fields(etcd)["labels"] == {"component": "etcd"}, "kept for keep_deleted"
