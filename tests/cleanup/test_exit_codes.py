"""Exit codes 0/1/2/3, each with one line and no traceback; LIST retries (defects 5, 6)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cleanup.conftest import JOBS, add, run_cli
from tests.cleanup.objects import job
from tests.fakekube.server import FakeKube

DAY = 86400.0


def _old_job(name: str) -> dict[str, Any]:
    now = time.time()
    return job(name, namespace="team-a", created=now - DAY, finished=now - DAY / 2)


def test_a_busy_api_server_on_list_is_retried_not_a_failed_run(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Main reported `list-failed` and exit 1 after one 429 or 5xx on a LIST."""
    add(fake_kube, _old_job("j1"))
    fake_kube.inject_fault(429, verb="list", resource="jobs", retry_after=0)
    fake_kube.inject_fault(500, verb="list", resource="jobs")
    config = write_config(backoff_base="10ms")
    code = run_cli(["cleanup", "--local", "--apply", "--output", "json", "--config", str(config),
                 "--kubeconfig", str(kubeconfig_path())])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["errors"] == []
    assert [d["name"] for d in report["deleted"]] == ["j1"]
    assert fake_kube.count("list", "jobs.batch", 429) == 1
    assert fake_kube.count("list", "jobs.batch", 500) == 1


def test_an_unreachable_api_server_is_exit_3_with_one_line(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Main gave exit 1 (like a partial failure) and dumped urllib3's MaxRetryError."""
    kubeconfig = FakeKube.write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:1", "t")
    config = write_config(retries=1, backoff_base="10ms")
    code = run_cli(["cleanup", "--local", "--config", str(config), "--kubeconfig", str(kubeconfig)])
    err = capsys.readouterr().err
    assert code == 3
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "cannot reach the API server at http://127.0.0.1:1" in line
    assert "Connection refused" in line
    assert "MaxRetryError" not in err
    assert "Traceback" not in err


def test_unreachable_redis_is_exit_3_before_anything_is_deleted(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The audit trail and the cancel keys need Redis: no Redis, no deletion, exit 3."""
    add(fake_kube, _old_job("j1"))
    code = run_cli(["cleanup", "--local", "--apply", "--config", str(write_config()),
                 "--kubeconfig", str(kubeconfig_path()),
                 "--redis-url", "redis://127.0.0.1:1/0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 3
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "audit" in line
    assert "Redis" in line
    assert "Traceback" not in err
    assert fake_kube.count("delete") == 0
    assert fake_kube.find(JOBS, "j1", "team-a") is not None


def test_bad_config_is_exit_2_and_a_failed_object_exit_1(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """2 names the field (a JMESPath that does not parse); 1 when an object failed (403)."""
    bad = write_config(rules=[{"name": "m", "resource": JOBS, "when": {"match": "status.[["}}])
    assert run_cli(["cleanup", "--local", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "rules[0] (name 'm').when.match" in err
    assert "JMESPath" in err
    add(fake_kube, _old_job("j1"))
    fake_kube.inject_fault(403, verb="delete", resource="jobs")
    code = run_cli(["cleanup", "--local", "--config", str(write_config()),
                 "--kubeconfig", str(kubeconfig_path())])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert "errors: 1" in out
    assert "Traceback" not in err
