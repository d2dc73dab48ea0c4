"""RBAC (401/403 in the server's words), fault injection, and request accounting."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.fakekube.server import FakeKube

CLEANER_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cleaner, namespace: batch}
rules:
  - apiGroups: ["batch"]
    resources: ["jobs"]
    verbs: ["get", "list", "watch", "delete"]
  - apiGroups: [""]
    resources: ["pods/log"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: cleaner, namespace: batch}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cleaner}
subjects:
  - {kind: ServiceAccount, name: opsq, namespace: ops}
"""


def test_role_grants_exactly_its_verbs_and_403_names_verb_resource_namespace(
    fake_kube: FakeKube, api_client
) -> None:
    """Allowed verbs work; anything else is the apiserver's Forbidden message."""
    issued = fake_kube.load_rbac(CLEANER_RBAC)
    assert [(t, u.name) for t, u in issued] == [("sa-ops-opsq", "system:serviceaccount:ops:opsq")]
    fake_kube.create("batch/v1/jobs", {"metadata": {"name": "j"}, "spec": {}}, "batch")
    batch = client.BatchV1Api(api_client("sa-ops-opsq"))
    assert [j.metadata.name for j in batch.list_namespaced_job("batch").items] == ["j"]
    with pytest.raises(ApiException) as err:
        batch.patch_namespaced_job("j", "batch", {"metadata": {"labels": {"a": "b"}}})
    body = json.loads(err.value.body)
    assert err.value.status == 403
    assert body["reason"] == "Forbidden"
    assert body["message"] == (
        'jobs.batch "j" is forbidden: User "system:serviceaccount:ops:opsq" cannot patch '
        'resource "jobs" in API group "batch" in the namespace "batch"'
    )
    assert body["details"] == {"name": "j", "group": "batch", "kind": "jobs"}
    with pytest.raises(ApiException) as err:
        batch.list_job_for_all_namespaces()
    assert json.loads(err.value.body)["message"].endswith(
        'cannot list resource "jobs" in API group "batch" at the cluster scope'
    )
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(api_client("sa-ops-opsq")).list_namespaced_pod("batch")
    assert json.loads(err.value.body)["message"].startswith("pods is forbidden: User")
    batch.delete_namespaced_job("j", "batch", propagation_policy="Background")


def test_forbidden_subresource_is_named_with_its_parent(fake_kube: FakeKube, api_client) -> None:
    """A pods/status write without that subresource granted names "pods/status"."""
    fake_kube.grant(
        "t", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}], namespace="default"
    )
    fake_kube.create("v1/pods", {"metadata": {"name": "p"}}, "default")
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(api_client("t")).patch_namespaced_pod_status(
            "p", "default", {"status": {"phase": "Failed"}}
        )
    assert (
        'cannot patch resource "pods/status" in API group ""'
        in json.loads(err.value.body)["message"]
    )


def test_unknown_token_is_401(fake_kube: FakeKube, api_client) -> None:
    """A token no one issued is Unauthorized, before any authorization."""
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(api_client("who-is-this")).list_namespace()
    assert err.value.status == 401
    assert json.loads(err.value.body)["reason"] == "Unauthorized"


@pytest.mark.parametrize("code", [429, 500, 503])
def test_injected_faults_hit_matching_requests_then_clear(
    fake_kube: FakeKube, api_client, code: int
) -> None:
    """A fault fails matching requests with the right Status (and Retry-After for 429/503).

    urllib3 itself retries 429/503 carrying Retry-After (three times), so the fault stays
    armed until cleared and announces a zero-second Retry-After to keep the test quick.
    """
    v1 = client.CoreV1Api(api_client())
    fake_kube.inject_fault(code, verb="list", resource="pods", count=None, retry_after=0)
    v1.list_namespaced_config_map("default")  # different resource: untouched
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod("default")
    assert err.value.status == code
    reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}[code]
    assert json.loads(err.value.body)["reason"] == reason
    assert err.value.headers["Retry-After"] == "0"
    fake_kube.clear_faults()
    v1.list_namespaced_pod("default")
    assert fake_kube.request_counts()[("list", "pods", code)] == (4 if code in (429, 503) else 1)
    assert fake_kube.count(verb="list", resource="pods", code=200) == 1


def test_request_accounting_counts_verbs_resources_and_codes(
    fake_kube: FakeKube, api_client
) -> None:
    """Every request is counted by RBAC verb, qualified resource and status code."""
    batch = client.BatchV1Api(api_client())
    fake_kube.create("batch/v1/jobs", {"metadata": {"name": "j"}, "spec": {}}, "default")
    batch.read_namespaced_job("j", "default")
    batch.list_namespaced_job("default", limit=5)
    with pytest.raises(ApiException):
        batch.read_namespaced_job("missing", "default")
    batch.delete_namespaced_job("j", "default", propagation_policy="Background")
    counts = fake_kube.request_counts()
    assert counts == {
        ("get", "jobs.batch", 200): 1,
        ("list", "jobs.batch", 200): 1,
        ("get", "jobs.batch", 404): 1,
        ("delete", "jobs.batch", 200): 1,
    }
    assert fake_kube.requests(verb="delete")[0].query["propagationPolicy"] == "Background"


@pytest.mark.slow
def test_standalone_server_writes_a_working_kubeconfig(tmp_path) -> None:
    """`python -m tests.fakekube --port 0` serves and its kubeconfig works with the client."""
    rbac = tmp_path / "rbac.yaml"
    rbac.write_text(CLEANER_RBAC)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakekube",
            "--port",
            "0",
            "--dir",
            str(tmp_path),
            "--rbac",
            str(rbac),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].startswith("fake Kubernetes API server on https://127.0.0.1:")
        api = config.new_client_from_config(config_file=str(tmp_path / "admin.kubeconfig"))
        assert "default" in [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items]
        sa = config.new_client_from_config(
            config_file=str(tmp_path / "system_serviceaccount_ops_opsq.kubeconfig")
        )
        assert client.BatchV1Api(sa).list_namespaced_job("batch").items == []
        api.close()
        sa.close()
    finally:
        proc.terminate()
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()
        proc.stdout.close()


def test_dropped_connection_and_slow_response_faults(fake_kube: FakeKube, api_client) -> None:
    """status=0 resets the connection; delay trips client read timeouts (urllib3 retries both)."""
    v1 = client.CoreV1Api(api_client())
    fake_kube.inject_fault(0, verb="list", resource="pods", count=None)
    with pytest.raises(urllib3.exceptions.MaxRetryError) as err:
        v1.list_namespaced_pod("default")
    assert isinstance(err.value.reason, urllib3.exceptions.ProtocolError)
    assert fake_kube.count(verb="list", resource="pods", code=0) == 4  # 1 try + 3 retries
    fake_kube.clear_faults()
    fake_kube.inject_fault(200, verb="get", resource="namespaces", delay=0.3, count=None)
    with pytest.raises(urllib3.exceptions.MaxRetryError) as err:
        v1.read_namespace("default", _request_timeout=(5, 0.05))
    assert isinstance(err.value.reason, urllib3.exceptions.ReadTimeoutError)
    fake_kube.clear_faults()
    assert v1.list_namespaced_pod("default").items == []
