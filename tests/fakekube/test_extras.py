"""Smaller protocol details: kubectl Tables, fixture helpers, media types, names."""

from __future__ import annotations

import json

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.fakekube.handlers import human_age
from tests.fakekube.rbac import ADMIN_TOKEN
from tests.fakekube.server import FakeKube

KUBECTL_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)


def raw_get(fake: FakeKube, path: str, accept: str = "application/json") -> dict:
    resp = urllib3.PoolManager().request(
        "GET", fake.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": accept}
    )
    return json.loads(resp.data)


def test_kubectl_get_receives_a_server_side_table(fake_kube: FakeKube) -> None:
    """`kubectl get pods` asks for as=Table and gets Name/Status/Age rows."""
    fake_kube.create(
        "v1/pods",
        {
            "metadata": {"name": "p", "creationTimestamp": fake_kube.ago(300)},
            "status": {"phase": "Running"},
        },
        "default",
    )
    table = raw_get(fake_kube, "/api/v1/namespaces/default/pods?limit=500", KUBECTL_ACCEPT)
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Status", "Age"]
    assert table["rows"][0]["cells"] == ["p", "Running", "5m"]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    plain = raw_get(fake_kube, "/api/v1/namespaces/default/pods")
    assert plain["kind"] == "PodList"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5, "5s"),
        (119, "119s"),
        (150, "2m30s"),
        (600, "10m"),
        (4 * 3600 + 60, "4h1m"),
        (30 * 3600, "30h"),
        (3 * 86400, "3d"),
        (20 * 86400, "20d"),
        (800 * 86400, "2y"),
    ],
)
def test_ages_print_like_kubectl(seconds: int, text: str) -> None:
    """Ages use apimachinery's HumanDuration steps."""
    assert human_age(seconds) == text


def test_finish_job_sets_conditions_and_completion_time(fake_kube: FakeKube, api_client) -> None:
    """finish_job() makes a Job Complete (status.successful=1) with a back-dated completion."""
    fake_kube.create("batch/v1/jobs", {"metadata": {"name": "j"}, "spec": {}}, "default")
    fake_kube.finish_job("j", ago=7200)
    job = client.BatchV1Api(api_client()).read_namespaced_job("j", "default")
    assert job.status.conditions[0].type == "Complete"
    assert job.status.completion_time.isoformat().startswith(fake_kube.ago(7200)[:13])
    found = client.BatchV1Api(api_client()).list_job_for_all_namespaces(
        field_selector="status.successful=1"
    )
    assert [j.metadata.name for j in found.items] == ["j"]


def test_generate_name_and_invalid_names(fake_kube: FakeKube, api_client) -> None:
    """generateName appends 5 characters; a name that is not a DNS subdomain is 422."""
    v1 = client.CoreV1Api(api_client())
    cm = v1.create_namespaced_config_map("default", {"metadata": {"generateName": "cm-"}})
    assert cm.metadata.name.startswith("cm-")
    assert len(cm.metadata.name) == 8
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_config_map("default", {"metadata": {"name": "Bad_Name"}})
    assert err.value.status == 422
    assert json.loads(err.value.body)["details"]["causes"][0]["field"] == "metadata.name"


def test_custom_resources_reject_strategic_merge_and_apply(fake_kube: FakeKube, api_client) -> None:
    """Strategic merge patch is 415 for custom resources, as on a real server."""
    fake_kube.register_crd("example.com", "v1", "widgets", "Widget")
    custom = client.CustomObjectsApi(api_client())
    custom.create_namespaced_custom_object(
        "example.com",
        "v1",
        "default",
        "widgets",
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
    )
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(
            "example.com",
            "v1",
            "default",
            "widgets",
            "w",
            {"spec": {}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert err.value.status == 415


def test_cluster_scoped_custom_resource(fake_kube: FakeKube, api_client) -> None:
    """A cluster-scoped CRD lives outside namespaces and lists cluster-wide."""
    fake_kube.register_crd("example.com", "v1", "clusterthings", "ClusterThing", namespaced=False)
    custom = client.CustomObjectsApi(api_client())
    custom.create_cluster_custom_object(
        "example.com",
        "v1",
        "clusterthings",
        {"apiVersion": "example.com/v1", "kind": "ClusterThing", "metadata": {"name": "t"}},
    )
    listed = custom.list_cluster_custom_object("example.com", "v1", "clusterthings")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["t"]
    assert "namespace" not in listed["items"][0]["metadata"]


def test_terminating_object_rejects_new_finalizers(fake_kube: FakeKube, api_client) -> None:
    """Once deletionTimestamp is set no finalizer may be added (422)."""
    v1 = client.CoreV1Api(api_client())
    fake_kube.create(
        "v1/configmaps", {"metadata": {"name": "cm", "finalizers": ["a/b"]}}, "default"
    )
    v1.delete_namespaced_config_map("cm", "default")
    with pytest.raises(ApiException) as err:
        v1.patch_namespaced_config_map("cm", "default", {"metadata": {"finalizers": ["c/d"]}})
    assert err.value.status == 422


def test_kubectl_watch_events_carry_one_row_tables(fake_kube: FakeKube) -> None:
    """`kubectl get -w` (as=Table) receives each watch event as a Table with one row."""
    fake_kube.create("v1/configmaps", {"metadata": {"name": "cm"}}, "default")
    resp = urllib3.PoolManager().request(
        "GET",
        f"{fake_kube.url}/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": KUBECTL_ACCEPT},
    )
    events = [json.loads(line) for line in resp.data.decode().splitlines()]
    assert [e["type"] for e in events] == ["ADDED"]
    assert events[0]["object"]["kind"] == "Table"
    assert events[0]["object"]["rows"][0]["cells"][0] == "cm"


def test_job_gets_controller_uid_selector_and_template_labels(
    fake_kube: FakeKube, api_client
) -> None:
    """Like the Job registry: selector on controller-uid, labels on the template and Job."""
    batch = client.BatchV1Api(api_client())
    template = {"spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}
    job = batch.create_namespaced_job(
        "default", {"metadata": {"name": "j"}, "spec": {"template": template}}
    )
    uid = job.metadata.uid
    assert job.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": uid}
    assert job.spec.template.metadata.labels["batch.kubernetes.io/job-name"] == "j"
    assert job.metadata.labels["controller-uid"] == uid


def test_custom_resource_put_needs_a_resource_version(fake_kube: FakeKube, api_client) -> None:
    """Custom resources refuse unconditional updates (422)."""
    fake_kube.register_crd("example.com", "v1", "widgets", "Widget")
    custom = client.CustomObjectsApi(api_client())
    body = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets", body)
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(
            "example.com", "v1", "default", "widgets", "w", body
        )
    assert err.value.status == 422


def test_pod_eviction_deletes_the_pod_with_its_options(fake_kube: FakeKube, api_client) -> None:
    """POST pods/eviction deletes the pod (201 Success), honouring deleteOptions."""
    v1 = client.CoreV1Api(api_client())
    fake_kube.create(
        "v1/pods",
        {"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Running"}},
        "default",
    )
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "p"},
        "deleteOptions": {"gracePeriodSeconds": 0},
    }
    v1.create_namespaced_pod_eviction("p", "default", body)
    assert fake_kube.find("v1/pods", "p", "default") is None
    assert fake_kube.count(verb="create", resource="pods/eviction", code=201) == 1


def test_custom_resources_are_forgotten_between_tests(fake_kube: FakeKube) -> None:
    """reset() drops registered CRDs so each test starts from the built-in types."""
    fake_kube.register_crd("example.com", "v1", "gadgets", "Gadget")
    fake_kube.reset()
    with pytest.raises(KeyError):
        fake_kube.resource("example.com/v1/gadgets")
