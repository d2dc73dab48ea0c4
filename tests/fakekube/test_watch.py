"""WATCH through kubernetes.watch.Watch: ordering, selectors, bookmarks, 410 Expired."""

from __future__ import annotations

import json
import threading

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.fakekube.server import FakeKube


def collect(
    api, fake: FakeKube, *, stop_after: int, **kwargs
) -> tuple[list[tuple[str, str]], threading.Thread]:
    """Watch pods in "default" on a thread until ``stop_after`` events arrived."""
    events: list[tuple[str, str]] = []
    w = watch.Watch()

    def run() -> None:
        for ev in w.stream(
            client.CoreV1Api(api).list_namespaced_pod, "default", timeout_seconds=20, **kwargs
        ):
            name = (
                ev["object"].metadata.name
                if ev["type"] != "BOOKMARK"
                else ev["raw_object"]["metadata"]["resourceVersion"]
            )
            events.append((ev["type"], name))
            if len(events) >= stop_after:
                w.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return events, thread


def test_watch_sees_added_modified_deleted_in_order(fake_kube: FakeKube, api_client) -> None:
    """Events arrive in commit order with strictly increasing resourceVersions."""
    api = api_client()
    start = fake_kube.resource_version
    events, thread = collect(api, fake_kube, stop_after=4, resource_version=str(start))
    fake_kube.wait_for_watches(1)
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod(
        "default",
        {"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
    )
    v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "1"}}})
    v1.create_namespaced_pod(
        "default",
        {"metadata": {"name": "b"}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
    )
    v1.delete_namespaced_pod("a", "default")
    thread.join(timeout=20)
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_watch_without_resource_version_starts_with_current_state(
    fake_kube: FakeKube, api_client
) -> None:
    """resourceVersion unset: synthetic ADDED for what exists, then live changes."""
    fake_kube.create("v1/pods", {"metadata": {"name": "old"}}, "default")
    events, thread = collect(api_client(), fake_kube, stop_after=2)
    fake_kube.wait_for_watches(1)
    fake_kube.create("v1/pods", {"metadata": {"name": "new"}}, "default")
    thread.join(timeout=20)
    assert events == [("ADDED", "old"), ("ADDED", "new")]


def test_label_selected_watch_sees_objects_enter_and_leave(fake_kube: FakeKube, api_client) -> None:
    """A relabel out of the selection is a DELETED event, into it an ADDED one."""
    fake_kube.create("v1/pods", {"metadata": {"name": "p", "labels": {"team": "a"}}}, "default")
    events, thread = collect(api_client(), fake_kube, stop_after=3, label_selector="team=a")
    fake_kube.wait_for_watches(1)
    fake_kube.patch("v1/pods", "p", {"metadata": {"labels": {"team": "b"}}}, "default")
    fake_kube.patch("v1/pods", "p", {"metadata": {"labels": {"team": "a"}}}, "default")
    thread.join(timeout=20)
    assert events == [("ADDED", "p"), ("DELETED", "p"), ("ADDED", "p")]


def test_bookmarks_carry_the_current_resource_version_when_allowed(
    fake_kube: FakeKube, api_client
) -> None:
    """allowWatchBookmarks=true yields BOOKMARK events with the latest resourceVersion."""
    fake_kube.create("v1/configmaps", {"metadata": {"name": "unrelated"}}, "default")
    events, thread = collect(
        api_client(),
        fake_kube,
        stop_after=1,
        allow_watch_bookmarks=True,
        resource_version=str(fake_kube.resource_version),
    )
    fake_kube.wait_for_watches(1)
    fake_kube.create("v1/configmaps", {"metadata": {"name": "other"}}, "default")
    fake_kube.send_bookmarks()
    thread.join(timeout=20)
    assert events == [("BOOKMARK", str(fake_kube.resource_version))]


def test_watch_from_compacted_version_raises_410(fake_kube: FakeKube, api_client) -> None:
    """The ERROR event (410 Expired, "too old resource version") becomes ApiException 410."""
    old = fake_kube.resource_version
    fake_kube.create("v1/pods", {"metadata": {"name": "x"}}, "default")
    fake_kube.compact()
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(
            client.CoreV1Api(api_client()).list_namespaced_pod,
            "default",
            resource_version=str(old),
            timeout_seconds=5,
        ):
            pass
    assert err.value.status == 410
    assert f"too old resource version: {old} ({fake_kube.resource_version})" in err.value.reason


def test_break_watches_ends_streams_and_client_resumes(fake_kube: FakeKube, api_client) -> None:
    """After break_watches() a Watch without timeout reconnects from its last version."""
    api = api_client()
    events: list[str] = []
    w = watch.Watch()

    def run() -> None:
        for ev in w.stream(
            client.CoreV1Api(api).list_namespaced_pod,
            "default",
            resource_version=str(fake_kube.resource_version),
        ):
            events.append(ev["object"].metadata.name)
            if len(events) == 2:
                w.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    fake_kube.wait_for_watches(1)
    fake_kube.create("v1/pods", {"metadata": {"name": "one"}}, "default")
    while not events:
        thread.join(timeout=0.01)
    assert fake_kube.break_watches() == 1
    while fake_kube.count(verb="watch", resource="pods") < 2:  # the client re-watches
        thread.join(timeout=0.01)
    fake_kube.create("v1/pods", {"metadata": {"name": "two"}}, "default")
    thread.join(timeout=20)
    assert events == ["one", "two"]
    resumed = fake_kube.requests(verb="watch", resource="pods")[1]
    assert int(resumed.query["resourceVersion"]) > int(
        fake_kube.requests(verb="watch")[0].query["resourceVersion"]
    )


def test_expire_watches_sends_error_410_and_the_rewatch_is_410_too(
    fake_kube: FakeKube, api_client
) -> None:
    """expire_watches(): the open stream ends with ERROR 410; Watch's one retry gets 410 again."""
    api = api_client()
    errors: list[int] = []

    def run() -> None:
        try:
            for _ in watch.Watch().stream(
                client.CoreV1Api(api).list_namespaced_pod,
                "default",
                resource_version=str(fake_kube.resource_version),
            ):
                pass
        except ApiException as exc:
            errors.append(exc.status)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    fake_kube.wait_for_watches(1)
    fake_kube.create("v1/pods", {"metadata": {"name": "seen"}}, "default")
    assert fake_kube.expire_watches() == 1
    thread.join(timeout=20)
    assert errors == [410]
    assert fake_kube.count(verb="watch", resource="pods") == 2


def test_concurrent_watches_stream_while_other_requests_proceed(
    fake_kube: FakeKube, api_client
) -> None:
    """Three long-lived watches on different kinds each see their events; CRUD is not blocked."""
    api = api_client()
    v1, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    since = str(fake_kube.resource_version)
    seen: dict[str, list[str]] = {"pods": [], "jobs": [], "cms": []}

    def follow(key: str, func, *args) -> threading.Thread:
        def run() -> None:
            w = watch.Watch()
            for ev in w.stream(func, *args, resource_version=since, timeout_seconds=20):
                seen[key].append(ev["object"].metadata.name)
                w.stop()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    threads = [
        follow("pods", v1.list_pod_for_all_namespaces),
        follow("jobs", batch.list_namespaced_job, "default"),
        follow("cms", v1.list_namespaced_config_map, "default"),
    ]
    fake_kube.wait_for_watches(3)
    for _i in range(20):  # plenty of ordinary requests while three streams are open
        v1.list_namespace()
    fake_kube.create("batch/v1/jobs", {"metadata": {"name": "j"}, "spec": {}}, "default")
    fake_kube.create("v1/configmaps", {"metadata": {"name": "c"}}, "default")
    fake_kube.create("v1/pods", {"metadata": {"name": "p"}}, "elsewhere")
    for thread in threads:
        thread.join(timeout=20)
    assert seen == {"pods": ["p"], "jobs": ["j"], "cms": ["c"]}


def test_field_selected_watch_across_namespaces(fake_kube: FakeKube, api_client) -> None:
    """A cluster-wide watch with fieldSelector status.phase only sees matching pods."""
    events, thread = collect_all(
        api_client(), fake_kube, stop_after=2, field_selector="status.phase=Succeeded"
    )
    fake_kube.wait_for_watches(1)
    fake_kube.create(
        "v1/pods", {"metadata": {"name": "running"}, "status": {"phase": "Running"}}, "a"
    )
    fake_kube.create(
        "v1/pods", {"metadata": {"name": "done"}, "status": {"phase": "Succeeded"}}, "b"
    )
    fake_kube.patch("v1/pods", "running", {"status": {"phase": "Succeeded"}}, "a")
    thread.join(timeout=20)
    assert events == [("ADDED", "done"), ("ADDED", "running")]


def collect_all(api, fake: FakeKube, *, stop_after: int, **kwargs):
    events: list[tuple[str, str]] = []
    w = watch.Watch()

    def run() -> None:
        for ev in w.stream(
            client.CoreV1Api(api).list_pod_for_all_namespaces,
            timeout_seconds=20,
            resource_version=str(fake.resource_version),
            **kwargs,
        ):
            events.append((ev["type"], ev["object"].metadata.name))
            if len(events) >= stop_after:
                w.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return events, thread


def test_send_initial_events_ends_with_an_annotated_bookmark(
    fake_kube: FakeKube, api_client
) -> None:
    """sendInitialEvents=true: ADDED for existing objects, then the initial-events-end BOOKMARK."""
    fake_kube.create("v1/pods", {"metadata": {"name": "a"}}, "default")
    http = urllib3.PoolManager()
    resp = http.request(
        "GET",
        f"{fake_kube.url}/api/v1/namespaces/default/pods?watch=1&sendInitialEvents=true"
        "&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1",
        headers={"Authorization": "Bearer fakekube-admin-token"},
    )
    lines = [json.loads(line) for line in resp.data.decode().splitlines()]
    assert [e["type"] for e in lines] == ["ADDED", "BOOKMARK"]
    assert lines[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_periodic_bookmarks_arrive_at_the_configured_interval(
    fake_kube: FakeKube, api_client
) -> None:
    """With a short bookmark_interval an idle watch keeps receiving BOOKMARKs."""
    fake_kube.bookmark_interval = 0.05
    events, thread = collect(
        api_client(),
        fake_kube,
        stop_after=3,
        allow_watch_bookmarks=True,
        resource_version=str(fake_kube.resource_version),
    )
    thread.join(timeout=20)
    assert [e[0] for e in events] == ["BOOKMARK"] * 3


def test_watch_on_a_named_object_sees_only_that_object(fake_kube: FakeKube) -> None:
    """GET .../pods/NAME?watch=1 (and the legacy /watch/ path) select that name only."""
    fake_kube.create("v1/pods", {"metadata": {"name": "a"}}, "default")
    fake_kube.create("v1/pods", {"metadata": {"name": "b"}}, "default")
    http = urllib3.PoolManager()
    headers = {"Authorization": "Bearer fakekube-admin-token"}
    for path in (
        "/api/v1/namespaces/default/pods/b?watch=1&timeoutSeconds=1",
        "/api/v1/watch/namespaces/default/pods/b?timeoutSeconds=1",
    ):
        resp = http.request("GET", fake_kube.url + path, headers=headers)
        names = [
            json.loads(line)["object"]["metadata"]["name"]
            for line in resp.data.decode().splitlines()
        ]
        assert names == ["b"]


def test_concurrent_writers_yield_one_strictly_increasing_event_stream(
    fake_kube: FakeKube, api_client
) -> None:
    """Four writer threads: the watch sees every write once, resourceVersions strictly rising."""
    api = api_client()
    v1 = client.CoreV1Api(api)
    since = fake_kube.resource_version
    versions: list[int] = []
    w = watch.Watch()

    def follow() -> None:
        for ev in w.stream(
            v1.list_namespaced_config_map,
            "default",
            resource_version=str(since),
            timeout_seconds=30,
        ):
            versions.append(int(ev["raw_object"]["metadata"]["resourceVersion"]))
            if len(versions) == 4 * 25 * 2:
                w.stop()

    clients = [client.CoreV1Api(api_client()) for _ in range(4)]

    def write(worker: int) -> None:
        v1_w = clients[worker]
        for i in range(25):
            v1_w.create_namespaced_config_map("default", {"metadata": {"name": f"w{worker}-{i}"}})
            v1_w.delete_namespaced_config_map(f"w{worker}-{i}", "default")

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    fake_kube.wait_for_watches(1)
    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=60)
    watcher.join(timeout=30)
    assert len(versions) == 200
    assert versions == sorted(set(versions))
    assert versions[-1] == fake_kube.resource_version
