"""pytest fixtures for the fake Kubernetes API server, registered for the whole tree.

One server per test session (starting threads per test would cost more than the tests),
wiped by :meth:`FakeKube.reset` before every test, so each test sees a fresh cluster:
only the default namespaces, no RBAC grants except the admin token, no faults, zeroed
request counts, and a clock back at real time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes
import pytest

from tests.fakekube.rbac import ADMIN_TOKEN
from tests.fakekube.server import FakeKube


@pytest.fixture(scope="session")
def fake_kube_server() -> Iterator[FakeKube]:
    server = FakeKube().start()
    yield server
    server.stop()


@pytest.fixture
def fake_kube(fake_kube_server: FakeKube) -> Iterator[FakeKube]:
    """The session's fake API server, reset to a fresh cluster for this test."""
    fake_kube_server.reset()
    yield fake_kube_server
    fake_kube_server.break_watches()
    fake_kube_server.reset()


@pytest.fixture
def kubeconfig_path(fake_kube: FakeKube, tmp_path: Path) -> Callable[..., Path]:
    """``kubeconfig_path(token=ADMIN_TOKEN)`` writes a kubeconfig for that token."""

    def _write(token: str = ADMIN_TOKEN, namespace: str = "default") -> Path:
        path = tmp_path / f"kubeconfig-{abs(hash(token))}"
        return fake_kube.kubeconfig(path, token, namespace)

    return _write


@pytest.fixture
def api_client(
    kubeconfig_path: Callable[..., Path],
) -> Iterator[Callable[..., kubernetes.client.ApiClient]]:
    """``api_client(token=ADMIN_TOKEN)``: a real ``ApiClient`` loaded from a kubeconfig."""
    made: list[kubernetes.client.ApiClient] = []

    def _make(token: str = ADMIN_TOKEN) -> kubernetes.client.ApiClient:
        path = str(kubeconfig_path(token))
        client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=path
        )
        made.append(client)
        return client

    yield _make
    for client in made:
        client.close()  # type: ignore[no-untyped-call]
