"""Discovery and plain CRUD through the real kubernetes client."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from tests.fakekube.server import FakeKube

TEMPLATE = {"spec": {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}}


def pod(name: str, **labels: str) -> dict:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


def test_dynamic_client_discovers_builtin_and_custom_resources(
    fake_kube: FakeKube, api_client
) -> None:
    """DynamicClient walks /api, /apis and the resource lists and finds kinds by group/version."""
    fake_kube.register_crd("example.com", "v1", "widgets", "Widget")
    dyn = DynamicClient(api_client())
    jobs = dyn.resources.get(api_version="batch/v1", kind="Job")
    assert jobs.namespaced
    assert "delete" in jobs.verbs
    assert dyn.resources.get(api_version="v1", kind="Namespace").namespaced is False
    widgets = dyn.resources.get(api_version="example.com/v1", kind="Widget")
    widgets.create(
        body={"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}},
        namespace="default",
    )
    assert [w.metadata.name for w in widgets.get(namespace="default").items] == ["w1"]
    assert dyn.version["kubernetes"]["major"] == "1"


def test_create_get_list_delete_pod(fake_kube: FakeKube, api_client) -> None:
    """A created pod gets uid, resourceVersion, creationTimestamp, generation; delete removes it."""
    v1 = client.CoreV1Api(api_client())
    created = v1.create_namespaced_pod("default", pod("p1"))
    assert created.metadata.uid
    assert created.metadata.creation_timestamp
    assert created.metadata.generation == 1
    assert created.status.phase == "Pending"
    fetched = v1.read_namespaced_pod("p1", "default")
    assert fetched.metadata.resource_version == created.metadata.resource_version
    assert [p.metadata.name for p in v1.list_pod_for_all_namespaces().items] == ["p1"]
    v1.delete_namespaced_pod("p1", "default")
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod("p1", "default")
    assert err.value.status == 404


def test_every_write_bumps_one_cluster_wide_resource_version(
    fake_kube: FakeKube, api_client
) -> None:
    """resourceVersions increase strictly across resource types."""
    api = api_client()
    v1, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    versions = [
        int(v1.create_namespaced_pod("default", pod("a")).metadata.resource_version),
        int(
            batch.create_namespaced_job(
                "default", {"metadata": {"name": "j"}, "spec": {"template": TEMPLATE}}
            ).metadata.resource_version
        ),
        int(
            v1.patch_namespaced_pod(
                "a", "default", {"metadata": {"labels": {"x": "y"}}}
            ).metadata.resource_version
        ),
        int(
            v1.create_namespaced_config_map(
                "default", {"metadata": {"name": "cm"}}
            ).metadata.resource_version
        ),
    ]
    assert versions == sorted(versions)
    assert len(set(versions)) == 4


def test_not_found_body_is_a_kubernetes_status(fake_kube: FakeKube, api_client) -> None:
    """404 carries a Status with reason NotFound, the qualified resource and name."""
    with pytest.raises(ApiException) as err:
        client.BatchV1Api(api_client()).read_namespaced_job("nope", "default")
    body = __import__("json").loads(err.value.body)
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'jobs.batch "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "group": "batch", "kind": "jobs"},
        "code": 404,
    }


def test_duplicate_create_is_409_already_exists_and_nameless_is_422(
    fake_kube: FakeKube, api_client
) -> None:
    """AlreadyExists and Invalid come back with the server's reasons and codes."""
    v1 = client.CoreV1Api(api_client())
    v1.create_namespaced_pod("default", pod("dup"))
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod("default", pod("dup"))
    assert err.value.status == 409
    assert '"reason":"AlreadyExists"' in err.value.body
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_config_map("default", {"metadata": {}})
    assert err.value.status == 422
    assert "name or generateName is required" in err.value.body


def test_create_in_missing_namespace_is_404(fake_kube: FakeKube, api_client) -> None:
    """The namespace must exist, as the NamespaceLifecycle admission plugin demands."""
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(api_client()).create_namespaced_pod("ghost", pod("p"))
    assert err.value.status == 404
    assert 'namespaces \\"ghost\\" not found' in err.value.body


def test_update_with_stale_resource_version_conflicts(fake_kube: FakeKube, api_client) -> None:
    """PUT with an old resourceVersion is 409 Conflict (optimistic concurrency)."""
    v1 = client.CoreV1Api(api_client())
    cm = v1.create_namespaced_config_map(
        "default", {"metadata": {"name": "cm"}, "data": {"a": "1"}}
    )
    v1.patch_namespaced_config_map("cm", "default", {"data": {"a": "2"}})
    cm.data = {"a": "3"}
    with pytest.raises(ApiException) as err:
        v1.replace_namespaced_config_map("cm", "default", cm)
    assert err.value.status == 409
    assert "the object has been modified" in err.value.body


def test_job_status_is_set_through_the_status_subresource(fake_kube: FakeKube, api_client) -> None:
    """The main resource ignores status; /status sets it (how a Job becomes finished)."""
    batch = client.BatchV1Api(api_client())
    batch.create_namespaced_job(
        "default",
        {"metadata": {"name": "j"}, "spec": {"template": TEMPLATE}, "status": {"succeeded": 1}},
    )
    assert not batch.read_namespaced_job("j", "default").status.succeeded
    condition = {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    batch.patch_namespaced_job_status(
        "j", "default", {"status": {"succeeded": 1, "conditions": [condition]}}
    )
    job = batch.read_namespaced_job("j", "default")
    assert job.status.succeeded == 1
    assert job.status.conditions[0].type == "Complete"


def test_json_patch_and_merge_patch_on_custom_objects(fake_kube: FakeKube, api_client) -> None:
    """CustomObjectsApi patches (merge patch) work; a JSON patch list is applied in order."""
    fake_kube.register_crd("example.com", "v1", "widgets", "Widget")
    custom = client.CustomObjectsApi(api_client())
    custom.create_namespaced_custom_object(
        "example.com",
        "v1",
        "default",
        "widgets",
        {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"size": 1},
        },
    )
    custom.patch_namespaced_custom_object(
        "example.com", "v1", "default", "widgets", "w", {"spec": {"size": 2}}
    )
    out = custom.patch_namespaced_custom_object(
        "example.com",
        "v1",
        "default",
        "widgets",
        "w",
        [{"op": "add", "path": "/spec/color", "value": "red"}],
        _content_type="application/json-patch+json",
    )
    assert out["spec"] == {"size": 2, "color": "red"}
    assert out["metadata"]["generation"] == 3


def test_strategic_merge_patch_merges_finalizers_like_the_server(
    fake_kube: FakeKube, api_client
) -> None:
    """finalizers is a patchStrategy=merge list: a strategic patch adds, null clears."""
    v1 = client.CoreV1Api(api_client())
    v1.create_namespaced_config_map("default", {"metadata": {"name": "cm", "finalizers": ["a/x"]}})
    out = v1.patch_namespaced_config_map("cm", "default", {"metadata": {"finalizers": ["b/y"]}})
    assert out.metadata.finalizers == ["a/x", "b/y"]
    out = v1.patch_namespaced_config_map(
        "cm", "default", {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a/x"]}}
    )
    assert out.metadata.finalizers == ["b/y"]
    out = v1.patch_namespaced_config_map("cm", "default", {"metadata": {"finalizers": None}})
    assert out.metadata.finalizers is None
