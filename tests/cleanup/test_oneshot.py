"""`opsq cleanup` (one-shot, --local) against the fake API server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from opsq.cli.main import main
from opsq.core.config.cleanup import ResourceRef
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.lister import list_all
from tests.cleanup.conftest import JOBS, add
from tests.cleanup.objects import job, pod
from tests.fakekube.server import FakeKube

DAY = 86400.0


def _old_job(name: str, namespace: str = "team-a", **meta: Any) -> dict[str, Any]:
    now = time.time()
    return job(name, namespace=namespace, created=now - DAY, finished=now - DAY / 2, **meta)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    try:
        code = int(main(["cleanup", "--local", "--output", "json", *args]) or 0)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_dry_run_changes_nothing_no_watch_event_and_same_resource_versions(
    fake_kube: FakeKube,
    kube: Kube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The default is a server-side dry run: DELETE with dryRun=All, nothing changes."""
    created = add(fake_kube, _old_job("j1"))
    rv_before = fake_kube.resource_version
    code, report = _run(
        capsys, "--config", str(write_config()), "--kubeconfig", str(kubeconfig_path())
    )
    assert code == 0
    assert report["dry_run"] is True
    assert [d["name"] for d in report["deleted"]] == ["j1"]
    assert report["deleted"][0]["result"] == "would_delete"
    assert {k for k in report["deleted"][0]} >= {
        "resource",
        "namespace",
        "name",
        "uid",
        "rule",
        "reason",
    }
    dry = fake_kube.requests("delete", "jobs.batch")
    assert [r.dry_run for r in dry] == [True]  # the server saw (and ran) the dry run
    assert fake_kube.resource_version == rv_before
    still = fake_kube.get(JOBS, "j1", "team-a")
    assert still["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert "deletionTimestamp" not in still["metadata"]
    events = kube.watch(
        ResourceRef.parse(JOBS),
        None,
        resource_version=str(rv_before),
        timeout_seconds=1,
        read_timeout=10,
    )
    assert [e for e in events if e["type"] != "BOOKMARK"] == []


def test_apply_deletes_jobs_in_background_so_their_pods_are_not_orphaned(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """batch/v1 Jobs default to Orphan; opsq sends propagationPolicy Background."""
    doomed = add(fake_kube, _old_job("doomed"))
    for i in range(2):
        add(
            fake_kube,
            pod(f"doomed-{i}", namespace="team-a", phase="Succeeded", owner=doomed),
            "v1/pods",
        )
    code, report = _run(
        capsys, "--apply", "--config", str(write_config()), "--kubeconfig", str(kubeconfig_path())
    )
    assert code == 0
    assert [d["result"] for d in report["deleted"]] == ["deleted"]
    fake_kube.settle()
    assert fake_kube.find(JOBS, "doomed", "team-a") is None
    assert fake_kube.list("v1/pods", "team-a") == []


def test_control_a_default_job_delete_orphans_its_pods(fake_kube: FakeKube, kube: Kube) -> None:
    """The hazard the explicit policy avoids, shown on the same fake server."""
    control = add(fake_kube, _old_job("control"))
    add(
        fake_kube, pod("control-0", namespace="team-a", phase="Succeeded", owner=control), "v1/pods"
    )
    fake_kube.delete(JOBS, "control", "team-a")  # no propagationPolicy: the Job default
    fake_kube.settle()
    (orphan,) = fake_kube.list("v1/pods", "team-a")
    assert not orphan["metadata"].get("ownerReferences")


def _terminating_seen() -> float:
    value = REGISTRY.get_sample_value(
        "opsq_cleanup_terminating_seen_total", {"resource": JOBS, "rule": "finished-jobs"}
    )
    return value or 0.0


def test_object_with_finalizer_becomes_terminating_and_is_never_deleted_twice(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    add(fake_kube, _old_job("held", finalizers=["example.com/hold"]))
    args = ["--apply", "--config", str(write_config()), "--kubeconfig", str(kubeconfig_path())]
    code, first = _run(capsys, *args)
    assert code == 0
    assert [d["name"] for d in first["deleted"]] == ["held"]
    held = fake_kube.get(JOBS, "held", "team-a")
    assert held["metadata"]["deletionTimestamp"]
    seen_before = _terminating_seen()
    for _ in range(2):
        code, again = _run(capsys, *args)
        assert code == 0
        assert again["deleted"] == []
        assert [(s["name"], s["reason"]) for s in again["skipped"]] == [("held", "terminating")]
    assert len(fake_kube.requests("delete", "jobs.batch")) == 1
    assert _terminating_seen() == seen_before + 2
    fake_kube.patch(JOBS, "held", {"metadata": {"finalizers": None}}, "team-a")
    fake_kube.settle()
    assert fake_kube.find(JOBS, "held", "team-a") is None


def test_pagination_reads_every_page_and_restarts_on_an_expired_continue_token(
    fake_kube: FakeKube, kube: Kube
) -> None:
    for i in range(10):
        add(fake_kube, _old_job(f"j{i:02d}", namespace=f"ns{i % 3}"))
    jobs = ResourceRef.parse(JOBS)
    listing = list_all(kube, jobs, None, page_size=3)
    assert listing.pages == 4
    assert sorted(o["metadata"]["name"] for o in listing.items) == [f"j{i:02d}" for i in range(10)]
    assert fake_kube.count("list", "jobs.batch", 200) == 4

    class CompactAfterFirstPage(Kube):
        """The real client; the cluster's history is compacted while we page."""

        def list(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            page = super().list(*args, **kwargs)
            if not kwargs.get("continue_token") and not getattr(self, "done", False):
                self.done = True
                add(fake_kube, _old_job("late", namespace="ns0"))
                fake_kube.compact()
            return page

    compacting = CompactAfterFirstPage(kube.api)
    listing = list_all(compacting, jobs, None, page_size=3)
    assert listing.restarts == 1
    assert len(listing.items) == 11  # the restarted LIST sees the newer snapshot
    assert fake_kube.count("list", "jobs.batch", 410) == 1


def test_missing_rbac_verb_fails_with_a_clear_403_and_generated_role_suffices(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    add(fake_kube, _old_job("j"))
    config = write_config()
    main(
        [
            "cleanup",
            "rbac",
            "--config",
            str(config),
            "--namespace",
            "ops",
            "--service-account",
            "opsq",
        ]
    )
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    fake_kube.load_rbac(yaml.safe_dump_all(docs))
    good = fake_kube.service_account_token("ops", "opsq")
    code, report = _run(capsys, "--config", str(config), "--kubeconfig", str(kubeconfig_path(good)))
    assert code == 0
    assert [d["name"] for d in report["deleted"]] == ["j"]

    docs[0]["rules"][0]["verbs"].remove("delete")
    docs[0]["metadata"]["name"] = docs[1]["metadata"]["name"] = "opsq-cleanup-weak"
    docs[1]["roleRef"]["name"] = "opsq-cleanup-weak"
    docs[1]["subjects"][0]["name"] = "weak"
    fake_kube.load_rbac(yaml.safe_dump_all(docs))
    weak = fake_kube.service_account_token("ops", "weak")
    code, report = _run(capsys, "--config", str(config), "--kubeconfig", str(kubeconfig_path(weak)))
    assert code == 1, report
    (error,) = report["errors"]
    assert error["reason"] == "forbidden"
    assert "cannot delete batch/v1/jobs in namespace 'team-a'" in error["message"]


@pytest.mark.slow
def test_oneshot_through_the_cleanup_queue_and_a_real_worker(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    redis_url: str,
    start_worker: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --local the plan is executed by `opsq.cleanup_object` tasks on workers."""
    add(fake_kube, _old_job("via-worker"))
    add(fake_kube, job("still-running", namespace="team-a", created=time.time() - DAY))
    kubeconfig, config = kubeconfig_path(), write_config()
    start_worker(
        queues="cleanup",
        env={"OPSQ_CONFIG": str(config), "OPSQ_CLEANUP__KUBECONFIG": str(kubeconfig)},
    )
    argv = ["cleanup", "--apply", "--output", "json", "--config", str(config),
            "--kubeconfig", str(kubeconfig), "--redis-url", redis_url, "--wait", "60"]  # fmt: skip
    code = main(argv)
    report = json.loads(capsys.readouterr().out)
    assert not code
    assert report["dry_run"] is False
    assert [(d["name"], d["result"]) for d in report["deleted"]] == [("via-worker", "deleted")]
    assert [(s["name"], s["reason"]) for s in report["skipped"]] == [
        ("still-running", "not-finished")
    ]
    assert fake_kube.find(JOBS, "via-worker", "team-a") is None
    assert fake_kube.find(JOBS, "still-running", "team-a") is not None
