"""DELETE: dry-run, preconditions, finalizers, grace periods, propagation policies."""

from __future__ import annotations

import json
import threading

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.fakekube.server import FakeKube


def job_with_pods(fake: FakeKube, name: str = "j", pods: int = 2) -> dict:
    job = fake.create("batch/v1/jobs", {"metadata": {"name": name}, "spec": {}}, "default")
    ref = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name,
        "uid": job["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for i in range(pods):
        fake.create(
            "v1/pods", {"metadata": {"name": f"{name}-{i}", "ownerReferences": [ref]}}, "default"
        )
    return job


def pod_names(fake: FakeKube) -> list[str]:
    return [p["metadata"]["name"] for p in fake.list("v1/pods", "default")]


def test_dry_run_delete_changes_nothing_and_emits_no_event(fake_kube: FakeKube, api_client) -> None:
    """dryRun=All answers like a delete but the object, RV and watchers are untouched."""
    api = api_client()
    v1 = client.CoreV1Api(api)
    fake_kube.create(
        "v1/pods",
        {"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Running"}},
        "default",
    )
    fake_kube.create("v1/configmaps", {"metadata": {"name": "cm"}}, "default")
    rv = fake_kube.resource_version
    seen: list[str] = []
    w = watch.Watch()
    thread = threading.Thread(
        target=lambda: seen.extend(
            e["type"]
            for e in w.stream(
                v1.list_namespaced_pod, "default", resource_version=str(rv), timeout_seconds=1
            )
        ),
        daemon=True,
    )
    thread.start()
    fake_kube.wait_for_watches(1)
    # Pods answer DELETE with the object (a V1Pod)...
    out = v1.delete_namespaced_pod("p", "default", dry_run="All", grace_period_seconds=0)
    assert out.metadata.name == "p"
    assert out.metadata.resource_version == str(rv - 1)
    # ...other kinds with a Success Status (which the v37 client hands back as a dict).
    status = v1.delete_namespaced_config_map("cm", "default", dry_run="All")
    assert status["status"] == "Success"
    assert status["details"]["name"] == "cm"
    thread.join(timeout=10)
    assert seen == []
    assert fake_kube.resource_version == rv
    assert fake_kube.get("v1/pods", "p", "default")["metadata"]["resourceVersion"] == str(rv - 1)
    assert fake_kube.requests(verb="delete")[0].dry_run


def test_dry_run_still_checks_preconditions(fake_kube: FakeKube, api_client) -> None:
    """Validation (preconditions included) runs under dryRun too."""
    fake_kube.create("v1/configmaps", {"metadata": {"name": "cm"}}, "default")
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(api_client()).delete_namespaced_config_map(
            "cm", "default", dry_run="All", body={"preconditions": {"uid": "not-it"}}
        )
    assert err.value.status == 409


def test_uid_precondition_protects_a_recreated_object(fake_kube: FakeKube, api_client) -> None:
    """Delete with the old UID after a delete+recreate is 409 with the server's message."""
    batch = client.BatchV1Api(api_client())
    old = fake_kube.create("batch/v1/jobs", {"metadata": {"name": "j"}, "spec": {}}, "default")
    fake_kube.delete("batch/v1/jobs", "j", "default", propagation_policy="Background")
    new = fake_kube.create("batch/v1/jobs", {"metadata": {"name": "j"}, "spec": {}}, "default")
    old_uid, new_uid = old["metadata"]["uid"], new["metadata"]["uid"]
    with pytest.raises(ApiException) as err:
        batch.delete_namespaced_job(
            "j",
            "default",
            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=old_uid)),
        )
    body = json.loads(err.value.body)
    assert err.value.status == 409
    assert body["reason"] == "Conflict"
    assert body["message"] == (
        f'Operation cannot be fulfilled on jobs.batch "j": Precondition failed: '
        f"UID in precondition: {old_uid}, UID in object meta: {new_uid}"
    )
    assert fake_kube.find("batch/v1/jobs", "j", "default") is not None


def test_resource_version_precondition_mismatch_is_409(fake_kube: FakeKube, api_client) -> None:
    """A stale resourceVersion precondition fails the delete."""
    cm = fake_kube.create("v1/configmaps", {"metadata": {"name": "cm"}}, "default")
    fake_kube.patch("v1/configmaps", "cm", {"data": {"a": "b"}}, "default")
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(api_client()).delete_namespaced_config_map(
            "cm",
            "default",
            body={"preconditions": {"resourceVersion": cm["metadata"]["resourceVersion"]}},
        )
    assert "Precondition failed: ResourceVersion in precondition" in err.value.body


def test_finalizers_keep_a_terminating_object_until_removed(
    fake_kube: FakeKube, api_client
) -> None:
    """deletionTimestamp set once; a repeat delete changes nothing; no finalizers = gone."""
    v1 = client.CoreV1Api(api_client())
    fake_kube.create(
        "v1/configmaps", {"metadata": {"name": "cm", "finalizers": ["example.com/hold"]}}, "default"
    )
    first = v1.delete_namespaced_config_map("cm", "default")
    terminating = fake_kube.get("v1/configmaps", "cm", "default")
    assert terminating["metadata"]["deletionTimestamp"]
    assert first["kind"] == "ConfigMap"  # not deleted yet: the object comes back, not a Status
    rv = fake_kube.resource_version
    fake_kube.advance(5)
    v1.delete_namespaced_config_map("cm", "default")
    again = fake_kube.get("v1/configmaps", "cm", "default")
    assert again["metadata"]["deletionTimestamp"] == terminating["metadata"]["deletionTimestamp"]
    assert fake_kube.resource_version == rv
    v1.patch_namespaced_config_map("cm", "default", {"metadata": {"finalizers": None}})
    assert fake_kube.find("v1/configmaps", "cm", "default") is None


def test_job_delete_defaults_to_orphan_and_strands_pods(fake_kube: FakeKube, api_client) -> None:
    """batch/v1 Jobs default to Orphan: orphan finalizer, then pods lose their ownerReferences."""
    job_with_pods(fake_kube)
    fake_kube.pause_controllers()
    client.BatchV1Api(api_client()).delete_namespaced_job("j", "default")
    assert fake_kube.get("batch/v1/jobs", "j", "default")["metadata"]["finalizers"] == ["orphan"]
    fake_kube.resume_controllers()
    assert fake_kube.find("batch/v1/jobs", "j", "default") is None
    pods = fake_kube.list("v1/pods", "default")
    assert len(pods) == 2
    assert all("ownerReferences" not in p["metadata"] for p in pods)


def test_job_delete_background_collects_its_pods(fake_kube: FakeKube, api_client) -> None:
    """propagationPolicy=Background deletes the Job now and its pods via the garbage collector."""
    job_with_pods(fake_kube)
    fake_kube.create("v1/pods", {"metadata": {"name": "unowned"}}, "default")
    out = client.BatchV1Api(api_client()).delete_namespaced_job(
        "j", "default", propagation_policy="Background"
    )
    assert out["status"] == "Success"
    assert out["details"]["kind"] == "jobs"
    fake_kube.settle()
    assert pod_names(fake_kube) == ["unowned"]


def test_foreground_deletes_dependents_before_the_owner(fake_kube: FakeKube, api_client) -> None:
    """Foreground: the owner waits (foregroundDeletion finalizer) until dependents are gone."""
    job_with_pods(fake_kube)
    fake_kube.pause_controllers()
    client.BatchV1Api(api_client()).delete_namespaced_job(
        "j", "default", propagation_policy="Foreground"
    )
    assert fake_kube.get("batch/v1/jobs", "j", "default")["metadata"]["finalizers"] == [
        "foregroundDeletion"
    ]
    assert len(pod_names(fake_kube)) == 2
    fake_kube.resume_controllers()
    assert pod_names(fake_kube) == []
    assert fake_kube.find("batch/v1/jobs", "j", "default") is None


def test_running_pod_deletes_gracefully_and_finished_pod_immediately(
    fake_kube: FakeKube, api_client
) -> None:
    """A scheduled running pod lingers for its grace period; a Succeeded pod goes at once."""
    v1 = client.CoreV1Api(api_client())
    fake_kube.create(
        "v1/pods",
        {"metadata": {"name": "run"}, "spec": {"nodeName": "n"}, "status": {"phase": "Running"}},
        "default",
    )
    fake_kube.create(
        "v1/pods",
        {"metadata": {"name": "done"}, "spec": {"nodeName": "n"}, "status": {"phase": "Succeeded"}},
        "default",
    )
    out = v1.delete_namespaced_pod("run", "default", grace_period_seconds=30)
    assert out.metadata.deletion_grace_period_seconds == 30
    v1.delete_namespaced_pod("done", "default")
    assert pod_names(fake_kube) == ["run"]
    fake_kube.advance(29)
    assert pod_names(fake_kube) == ["run"]
    fake_kube.advance(2)
    assert pod_names(fake_kube) == []


def test_namespace_deletion_removes_its_content(fake_kube: FakeKube, api_client) -> None:
    """A deleted namespace is Terminating, refuses new content, then disappears with its objects."""
    v1 = client.CoreV1Api(api_client())
    fake_kube.create("v1/pods", {"metadata": {"name": "p"}}, "team")
    fake_kube.pause_controllers()
    ns = v1.delete_namespace("team")
    assert ns["status"]["phase"] == "Terminating"
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_config_map("team", {"metadata": {"name": "cm"}})
    assert err.value.status == 403
    assert "being terminated" in err.value.body
    fake_kube.resume_controllers()
    assert fake_kube.find("v1/namespaces", "team") is None
    assert fake_kube.list("v1/pods", "team") == []


def test_delete_collection_with_selector(fake_kube: FakeKube, api_client) -> None:
    """deletecollection deletes exactly the selected objects."""
    for name, team in (("a", "x"), ("b", "y"), ("c", "x")):
        fake_kube.create(
            "v1/configmaps", {"metadata": {"name": name, "labels": {"team": team}}}, "default"
        )
    client.CoreV1Api(api_client()).delete_collection_namespaced_config_map(
        "default", label_selector="team=x"
    )
    assert [c["metadata"]["name"] for c in fake_kube.list("v1/configmaps", "default")] == ["b"]


def test_system_namespaces_may_not_be_deleted(fake_kube: FakeKube, api_client) -> None:
    """default, kube-system and kube-public are protected like on a real cluster."""
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(api_client()).delete_namespace("kube-system")
    assert err.value.status == 403
    assert json.loads(err.value.body)["message"] == (
        'namespaces "kube-system" is forbidden: this namespace may not be deleted'
    )
