"""Fixtures for cleanup tests: a Kube client and configs pointed at the fake API server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsq.cli.main import main
from opsq.core.config.cleanup import CleanupSettings
from opsq.engines.cleanup.kube import Kube
from tests.fakekube.server import FakeKube

JOBS = "batch/v1/jobs"
FINISHED_JOBS = {
    "name": "finished-jobs",
    "resource": JOBS,
    "when": {"finished": True, "older_than": "1h"},
}


@pytest.fixture(autouse=True)
def _private_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cleanup command in these tests talks to the session's Redis (the audit
    trail and the cancel keys live there), never to a shared 6379."""
    monkeypatch.setenv("OPSQ_REDIS_URL", redis_url)


@pytest.fixture
def kube(kubeconfig_path: Callable[..., Path]) -> Kube:
    """An admin client of the fake server through the real kubernetes ApiClient."""
    return Kube.connect(str(kubeconfig_path()))


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """``write_config(rules=[...], **cleanup)`` -> path of an opsq YAML config."""

    def _write(rules: list[dict[str, Any]] | None = None, **cleanup: Any) -> Path:
        path = tmp_path / "opsq.yaml"
        body = {"cleanup": {"rules": rules or [FINISHED_JOBS], **cleanup}}
        path.write_text(yaml.safe_dump(body))
        return path

    return _write


def run_cli(argv: list[str]) -> int:
    """`opsq ARGV` in this process; its exit code (0 for a plain return)."""
    try:
        return int(main(argv) or 0)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture
def cleanup_worker(start_worker: Callable[..., Any]) -> Callable[[Path, Path], Any]:
    """``cleanup_worker(config, kubeconfig)``: a real worker on the cleanup queue."""

    def _start(config: Path, kubeconfig: Path) -> Any:
        env = {"OPSQ_CONFIG": str(config), "OPSQ_CLEANUP__KUBECONFIG": str(kubeconfig)}
        return start_worker(queues="cleanup", env=env)

    return _start


def settings(rules: list[dict[str, Any]] | None = None, **cleanup: Any) -> CleanupSettings:
    return CleanupSettings.model_validate({"rules": rules or [FINISHED_JOBS], **cleanup})


def add(fake: FakeKube, obj: dict[str, Any], resource: str = JOBS) -> dict[str, Any]:
    """Create *obj* directly in the fake's store (timestamps and status kept)."""
    return fake.create(resource, obj, namespace=obj["metadata"]["namespace"])
