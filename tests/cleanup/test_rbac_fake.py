"""`opsq cleanup rbac` loaded into the fake's RBAC permits exactly what the commands do,
in cluster mode and in namespaced mode (defect 4)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsq.cli.main import main
from opsq.core.config.cleanup import CleanupSettings, ResourceRef
from opsq.engines.cleanup import rbac
from opsq.engines.cleanup.kube import Forbidden, Kube
from opsq.engines.cleanup.lister import list_all
from opsq.engines.cleanup.watcher import Watcher
from producers.watch import NoClaims, WatchProducer
from tests.cleanup.conftest import JOBS, add
from tests.cleanup.objects import job
from tests.fakekube.server import FakeKube

DAY = 86400.0
PVCS = "v1/persistentvolumeclaims"


def _rules(jobs_namespaces: list[str]) -> list[dict[str, Any]]:
    return [
        {"name": "jobs", "resource": JOBS, "namespaces": {"include": jobs_namespaces},
         "when": {"finished": True, "older_than": "1h"}},
        {"name": "pvcs", "resource": PVCS, "namespaces": {"include": ["team-a"]},
         "when": {"unused": True}},
        {"name": "pr-namespaces", "resource": "v1/namespaces",
         "namespaces": {"include": ["pr-*"]}, "when": {"ttl_annotation": True}},
    ]  # fmt: skip


def _owned_by(owner: dict[str, Any]) -> dict[str, Any]:
    md = owner["metadata"]
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": md["name"],
           "uid": md["uid"], "controller": True}  # fmt: skip
    return {"ownerReferences": [ref]}


def _cluster(fake: FakeKube) -> None:
    now = time.time()
    for ns in ("team-a", "team-b"):
        add(fake, job(f"old-{ns}", namespace=ns, created=now - DAY, finished=now - DAY / 2))
    fake.create(PVCS, {"metadata": {"name": "orphan"}}, namespace="team-a")
    fake.create(
        "v1/namespaces",
        {"metadata": {"name": "pr-1", "annotations": {"opsq.io/expires": "2020-01-01"}}},
    )
    # Owned objects, so the owner guard GETs owners no rule lists (hostile check F16:
    # the generated RBAC did not grant those GETs, so every owned object was
    # owner-unverifiable): a CronJob's Job, a StatefulSet's claim, an ephemeral claim.
    cron = fake.create("batch/v1/cronjobs", {"metadata": {"name": "nightly"}}, namespace="team-a")
    add(fake, job("nightly-1", namespace="team-a", created=now - DAY, finished=now - DAY / 2,
                  **_owned_by(cron)))  # fmt: skip
    sts = fake.create("apps/v1/statefulsets", {"metadata": {"name": "db"}}, namespace="team-a")
    fake.create(PVCS, {"metadata": {"name": "db-claim", **_owned_by(sts)}}, namespace="team-a")
    pod = fake.create("v1/pods", {"metadata": {"name": "eph"}, "spec": {"containers": []}},
                      namespace="team-a")  # fmt: skip
    fake.create(PVCS, {"metadata": {"name": "eph-claim", **_owned_by(pod)}}, namespace="team-a")


def _load_rbac(
    fake: FakeKube, config: Path, capsys: pytest.CaptureFixture[str], *flags: str
) -> str:
    main(["cleanup", "rbac", "--config", str(config), "--namespace", "ops",
          "--service-account", "opsq", *flags])  # fmt: skip
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    fake.load_rbac(yaml.safe_dump_all(docs))
    return fake.service_account_token("ops", "opsq")


def _used(fake: FakeKube) -> set[tuple[str, str, str]]:
    out = set()
    for r in fake.requests():
        if r.resource:
            plural, _, group = r.resource.partition(".")
            out.add((group, plural, r.verb))
    return out


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def _sync_watcher(cfg: CleanupSettings, kube: Kube, stop: threading.Event) -> Watcher:
    """Run every informer of `opsq watch` until synced (LIST and WATCH with the role)."""
    watcher = Watcher(cfg, kube)
    producer = WatchProducer(cfg, watcher, lambda t, c: None, NoClaims(), ahead=0.0)
    threads = producer.start_informers(stop)
    deadline = time.monotonic() + 20
    while not watcher.synced and time.monotonic() < deadline:
        assert all(i.fatal is None for i in watcher.all_informers), [
            i.error for i in watcher.all_informers
        ]
        time.sleep(0.05)
    assert watcher.synced
    assert all(t.is_alive() for t in threads)
    return watcher


@pytest.mark.parametrize(
    ("flags", "jobs_namespaces", "kinds"),
    [
        ((), ["*"], {"ClusterRole", "ClusterRoleBinding"}),
        (("--namespaced",), ["team-a", "team-b"],
         {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}),
    ],
)  # fmt: skip
def test_generated_rbac_permits_exactly_what_cleanup_and_watch_do(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    stop: threading.Event,
    flags: tuple[str, ...],
    jobs_namespaces: list[str],
    kinds: set[str],
) -> None:
    """No request of the one-shot or the informers is refused, every object is deleted,
    and every granted (group, resource, verb) is one the commands use."""
    _cluster(fake_kube)
    config = write_config(rules=_rules(jobs_namespaces), events=True, verify_with_get=True)
    token = _load_rbac(fake_kube, config, capsys, *flags)
    main(["cleanup", "rbac", "--config", str(config), *flags])
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert {d["kind"] for d in docs} == kinds
    fake_kube.reset_counts()
    kubeconfig = kubeconfig_path(token)
    code = main(["cleanup", "--local", "--apply", "--output", "json", "--config", str(config),
                 "--kubeconfig", str(kubeconfig)])  # fmt: skip
    assert not code
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == []
    deleted = sorted(d["name"] for d in report["deleted"])
    assert deleted == ["old-team-a", "old-team-b", "orphan", "pr-1"]
    owned = {(s["name"], s["reason"]) for s in report["skipped"] if s["name"] != "eph"}
    assert owned == {("nightly-1", "owner-exists"), ("db-claim", "owner-exists"),
                     ("eph-claim", "owner-exists")}  # fmt: skip
    cfg = CleanupSettings.model_validate({"rules": _rules(jobs_namespaces), "events": True})
    _sync_watcher(cfg, Kube.connect(str(kubeconfig)), stop)
    granted = rbac.grants([r for d in docs if "rules" in d for r in d["rules"]])
    deadline = time.monotonic() + 10  # "synced" comes before each informer opens its WATCH
    while granted - _used(fake_kube) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_kube.count(code=403) == 0
    assert granted - _used(fake_kube) == set(), "granted but never used"
    assert _used(fake_kube) - granted == set()


def test_a_forbidden_cluster_wide_list_names_a_cluster_role_as_the_fix(
    fake_kube: FakeKube, kubeconfig_path: Callable[..., Path]
) -> None:
    """Main's hint pointed back at `opsq cleanup rbac`, whose Role could never work."""
    fake_kube.grant("weak", [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list"]}],
                    namespace="team-a")  # fmt: skip
    kube = Kube.connect(str(kubeconfig_path("weak")))
    with pytest.raises(Forbidden) as caught:
        list_all(kube, ResourceRef.parse(JOBS), None, page_size=10)
    message = str(caught.value)
    assert "ClusterRole" in message
    assert "a Role cannot grant a request across all namespaces" in message


def test_watch_without_list_permission_exits_1_instead_of_retrying_forever(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Main's watch retried a 403 LIST forever; before the first sync it is a config fault."""
    monkeypatch.setenv("OPSQ_CLEANUP__METRICS_PORT", "0")
    fake_kube.grant("weak", [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list"]}],
                    namespace="team-a")  # fmt: skip
    argv = ["watch", "--local", "--config", str(write_config()),
            "--kubeconfig", str(kubeconfig_path("weak"))]  # fmt: skip
    assert main(argv) == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert "forbidden: cannot list batch/v1/jobs (all namespaces)" in line
    assert "ClusterRole" in line
