"""LIST: pagination with consistent snapshots, resourceVersion semantics, selectors."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.fakekube.server import FakeKube


def make_pods(fake: FakeKube, count: int, namespace: str = "default", prefix: str = "p") -> None:
    for i in range(count):
        fake.create(
            "v1/pods",
            {"metadata": {"name": f"{prefix}{i:03d}", "labels": {"i": str(i % 3)}}},
            namespace,
        )


def test_pages_follow_continue_tokens_and_show_one_snapshot(
    fake_kube: FakeKube, api_client
) -> None:
    """limit/continue walk every object once; objects created mid-walk are not in the snapshot."""
    make_pods(fake_kube, 25)
    v1 = client.CoreV1Api(api_client())
    first = v1.list_namespaced_pod("default", limit=10)
    assert len(first.items) == 10
    assert first.metadata.remaining_item_count == 15
    fake_kube.create("v1/pods", {"metadata": {"name": "p999"}}, "default")  # after the snapshot
    names = [p.metadata.name for p in first.items]
    token, pages = first.metadata._continue, 1
    while token:
        page = v1.list_namespaced_pod("default", limit=10, _continue=token)
        assert page.metadata.resource_version == first.metadata.resource_version
        names += [p.metadata.name for p in page.items]
        token, pages = page.metadata._continue, pages + 1
    assert pages == 3
    assert names == [f"p{i:03d}" for i in range(25)]


def test_expired_continue_token_is_410_expired(fake_kube: FakeKube, api_client) -> None:
    """After compaction a continue token is 410 Expired with a fresh token to go on."""
    make_pods(fake_kube, 5)
    v1 = client.CoreV1Api(api_client())
    first = v1.list_namespaced_pod("default", limit=2)
    fake_kube.create("v1/pods", {"metadata": {"name": "late"}}, "default")
    fake_kube.compact()
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod("default", limit=2, _continue=first.metadata._continue)
    body = json.loads(err.value.body)
    assert err.value.status == 410
    assert body["reason"] == "Expired"
    assert "continue parameter is too old" in body["message"]
    assert body["metadata"]["continue"]


def test_list_resource_version_semantics(fake_kube: FakeKube, api_client) -> None:
    """Exact reads the past, NotOlderThan reads the present, a future version is 504."""
    v1 = client.CoreV1Api(api_client())
    make_pods(fake_kube, 2)
    before = v1.list_namespaced_pod("default").metadata.resource_version
    make_pods(fake_kube, 2, prefix="q")
    past = v1.list_namespaced_pod(
        "default", resource_version=before, resource_version_match="Exact"
    )
    assert len(past.items) == 2
    assert past.metadata.resource_version == before
    now = v1.list_namespaced_pod(
        "default", resource_version=before, resource_version_match="NotOlderThan"
    )
    assert len(now.items) == 4
    assert len(v1.list_namespaced_pod("default", resource_version="0").items) == 4
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod("default", resource_version=str(fake_kube.resource_version + 50))
    assert err.value.status == 504
    assert "Too large resource version" in err.value.body


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("i=1", {"p001", "p004"}),
        ("i==1", {"p001", "p004"}),
        ("i!=1", {"p000", "p002", "p003", "p005", "nolabel"}),
        ("i in (0, 2)", {"p000", "p002", "p003", "p005"}),
        ("i notin (0,2)", {"p001", "p004", "nolabel"}),
        ("i", {f"p{i:03d}" for i in range(6)}),
        ("!i", {"nolabel"}),
        ("i,i!=0", {"p001", "p002", "p004", "p005"}),
        ("i>1", {"p002", "p005"}),
    ],
)
def test_label_selector_grammar(
    fake_kube: FakeKube, api_client, selector: str, expected: set[str]
) -> None:
    """Every operator of the Kubernetes label selector grammar selects what the server would."""
    make_pods(fake_kube, 6)
    fake_kube.create("v1/pods", {"metadata": {"name": "nolabel"}}, "default")
    items = (
        client.CoreV1Api(api_client()).list_namespaced_pod("default", label_selector=selector).items
    )
    assert {p.metadata.name for p in items} == expected


@pytest.mark.parametrize("selector", ["i in (", "a b", "=x", "i in ()", "-bad=1", "i=-x-"])
def test_invalid_label_selector_is_400(fake_kube: FakeKube, api_client, selector: str) -> None:
    """What the server's parser rejects is a 400 BadRequest Status."""
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(api_client()).list_namespaced_pod("default", label_selector=selector)
    assert err.value.status == 400
    assert json.loads(err.value.body)["reason"] == "BadRequest"


def test_field_selectors_for_pods_and_jobs(fake_kube: FakeKube, api_client) -> None:
    """status.phase, spec.nodeName, metadata.name for pods; status.successful for jobs."""
    api = api_client()
    v1, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    fake_kube.create(
        "v1/pods",
        {
            "metadata": {"name": "done"},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Succeeded"},
        },
        "default",
    )
    fake_kube.create(
        "v1/pods",
        {"metadata": {"name": "run"}, "spec": {"nodeName": "n2"}, "status": {"phase": "Running"}},
        "other",
    )
    by_phase = v1.list_pod_for_all_namespaces(field_selector="status.phase!=Running").items
    assert [p.metadata.name for p in by_phase] == ["done"]
    both = v1.list_pod_for_all_namespaces(
        field_selector="spec.nodeName=n2,metadata.namespace=other"
    ).items
    assert [p.metadata.name for p in both] == ["run"]
    assert [
        p.metadata.name
        for p in v1.list_pod_for_all_namespaces(field_selector="metadata.name=done").items
    ] == ["done"]
    fake_kube.create(
        "batch/v1/jobs",
        {"metadata": {"name": "ok"}, "spec": {}, "status": {"succeeded": 1}},
        "default",
    )
    fake_kube.create("batch/v1/jobs", {"metadata": {"name": "new"}, "spec": {}}, "default")
    assert [
        j.metadata.name
        for j in batch.list_namespaced_job("default", field_selector="status.successful=1").items
    ] == ["ok"]
    assert [
        j.metadata.name
        for j in batch.list_namespaced_job("default", field_selector="status.successful=0").items
    ] == ["new"]


def test_unsupported_field_label_is_400_like_the_server(fake_kube: FakeKube, api_client) -> None:
    """A field the resource does not index is "field label not supported"."""
    with pytest.raises(ApiException) as err:
        client.BatchV1Api(api_client()).list_namespaced_job(
            "default", field_selector="status.phase=Done"
        )
    body = json.loads(err.value.body)
    assert err.value.status == 400
    assert body["message"] == "field label not supported: status.phase"


def test_list_with_selector_pages_only_matching_items(fake_kube: FakeKube, api_client) -> None:
    """Pagination and selectors combine: pages of matches, no remainingItemCount."""
    make_pods(fake_kube, 12)
    v1 = client.CoreV1Api(api_client())
    page = v1.list_namespaced_pod("default", label_selector="i=0", limit=2)
    assert [p.metadata.name for p in page.items] == ["p000", "p003"]
    assert page.metadata.remaining_item_count is None
    rest = v1.list_namespaced_pod(
        "default", label_selector="i=0", limit=10, _continue=page.metadata._continue
    )
    assert [p.metadata.name for p in rest.items] == ["p006", "p009"]
    assert not rest.metadata._continue
