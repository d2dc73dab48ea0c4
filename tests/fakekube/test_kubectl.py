"""The fake over TLS, driven by the Python client and by the real kubectl binary.

kubectl (client-go) only sends bearer tokens over TLS, so these tests use a server with
``tls=True`` and a kubeconfig carrying its throw-away CA. The kubectl tests find the
binary with ``require_tool`` (Debian's kubernetes-client when the machine has none).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from kubernetes import client

from tests.fakekube.rbac import ADMIN_TOKEN
from tests.fakekube.server import FakeKube
from tests.support.tools import require_tool


@pytest.fixture(scope="module")
def tls_kube() -> Iterator[FakeKube]:
    with FakeKube(tls=True) as fake:
        yield fake


@pytest.fixture
def tls_fake(tls_kube: FakeKube) -> Iterator[FakeKube]:
    tls_kube.reset()
    yield tls_kube
    tls_kube.reset()


def kubectl(config: Path, *args: str) -> str:
    done = subprocess.run(
        [require_tool("kubectl"), "--kubeconfig", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_python_client_verifies_the_fake_ca(tls_fake: FakeKube, tmp_path: Path) -> None:
    """The kubeconfig's certificate-authority-data lets the client verify the server."""
    assert tls_fake.url.startswith("https://")
    config = tls_fake.kubeconfig(tmp_path / "kc", ADMIN_TOKEN)
    api = kubernetes.config.new_client_from_config(config_file=str(config))
    try:
        names = [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items]
    finally:
        api.close()
    assert "kube-system" in names


@pytest.mark.slow
def test_kubectl_gets_creates_and_deletes(tls_fake: FakeKube, tmp_path: Path) -> None:
    """kubectl discovers, prints tables, creates from a manifest and deletes with --wait."""
    config = tls_fake.kubeconfig(tmp_path / "kc", ADMIN_TOKEN)
    assert "namespace/kube-system" in kubectl(config, "get", "namespaces", "-o", "name")
    manifest = tmp_path / "cm.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: made-by-kubectl}\n")
    kubectl(config, "create", "--validate=false", "-f", str(manifest))
    table = kubectl(config, "get", "configmaps")
    assert table.splitlines()[0].split() == ["NAME", "AGE"]
    assert "made-by-kubectl" in table
    kubectl(config, "delete", "configmap", "made-by-kubectl", "--wait=true")
    assert tls_fake.find("v1/configmaps", "made-by-kubectl", "default") is None
    assert "jobs" in kubectl(config, "api-resources", "--api-group=batch", "-o", "name")


@pytest.mark.slow
def test_kubectl_sees_rbac_denials_in_the_servers_words(tls_fake: FakeKube, tmp_path: Path) -> None:
    """A service account without the verb gets the apiserver's Forbidden sentence."""
    token = tls_fake.service_account_token("ops", "opsq")
    tls_fake.grant(
        token, [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}], namespace="default"
    )
    config = tls_fake.kubeconfig(tmp_path / "kc", token)
    kubectl(config, "get", "pods")
    done = subprocess.run(
        [require_tool("kubectl"), "--kubeconfig", str(config), "delete", "pod", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert (
        'pods "x" is forbidden: User "system:serviceaccount:ops:opsq" cannot delete '
        'resource "pods" in API group "" in the namespace "default"'
    ) in done.stderr
