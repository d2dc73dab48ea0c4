"""The smaller defects (8) and the kube-janitor parity conditions: expiry annotations,
TTL-only and match rules, heads-up Events, the audit trail."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsq.core.config.cleanup import CleanupSettings
from opsq.engines.cleanup import planner
from opsq.engines.cleanup.executor import Executor, Target
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.watcher import Watcher
from producers.watch import NoClaims, WatchProducer
from tests.cleanup.conftest import JOBS, add, run_cli, settings
from tests.cleanup.objects import job
from tests.fakekube.server import FakeKube
from tests.support.receivers import HttpReceiver

DAY = 86400.0
HOUR = 3600.0
ANNOTATIONS = planner.Annotations(("opsq.io/ttl",), ("opsq.io/expires",))


def _old_job(name: str, **meta: Any) -> dict[str, Any]:
    now = time.time()
    return job(name, namespace="team-a", created=now - DAY, finished=now - DAY / 2, **meta)


def test_deletion_events_name_the_kind_not_the_plural(fake_kube: FakeKube, kube: Kube) -> None:
    """Main sent involvedObject.kind "jobs"."""
    created = add(fake_kube, _old_job("j"))
    cfg = settings(events=True, dry_run=False)
    md = created["metadata"]
    target = Target("finished-jobs", JOBS, "team-a", "j", md["uid"], md["resourceVersion"],
                    kind="Job")  # fmt: skip
    assert Executor(kube, cfg).execute(target, dry_run=False).result == "deleted"
    (event,) = fake_kube.list("v1/events", "team-a")
    assert event["involvedObject"]["kind"] == "Job"


def test_the_table_fits_long_resources_and_prints_days(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Main's RESOURCE column overflowed into the next and 40 days printed as `960h`."""
    resource = "sandboxes.preview.example.com/v1alpha1/ephemeralenvironments"
    fake_kube.register_crd("sandboxes.preview.example.com", "v1alpha1", "ephemeralenvironments",
                           "EphemeralEnvironment")  # fmt: skip
    fake_kube.create(
        resource, {"metadata": {"name": "env-1", "creationTimestamp": fake_kube.ago(40 * DAY)}},
        namespace="team-a",
    )  # fmt: skip
    config = write_config(rules=[{"name": "old-envs", "resource": resource,
                                  "when": {"older_than": "30d"}}])  # fmt: skip
    assert run_cli(["cleanup", "--local", "--config", str(config),
                 "--kubeconfig", str(kubeconfig_path())]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("ACTION"))
    row = next(line for line in lines if "team-a/env-1" in line)
    assert f" {resource}  " in row
    assert row.index("team-a/env-1") == header.index("NAMESPACE/NAME")
    assert " 40d " in row


def test_a_dry_run_watch_does_not_repeat_the_same_delete_at_every_resync(
    fake_kube: FakeKube, kube: Kube
) -> None:
    """Main sent a dry-run DELETE for the same unchanged object every resync."""
    add(fake_kube, _old_job("j"))
    cfg = settings()
    watcher = Watcher(cfg, kube)
    sent: list[str] = []
    producer = WatchProducer(
        cfg, watcher, lambda t, c: sent.append(t.name), NoClaims(), ahead=0.0, dry_run=True
    )
    for informer in watcher.informers:
        informer.relist()
    for _ in range(3):
        producer.tick()
        for informer in watcher.informers:
            informer.resync()
    assert sent == ["j"]
    fake_kube.patch(JOBS, "j", {"metadata": {"labels": {"touched": "yes"}}}, "team-a")
    for informer in watcher.informers:
        informer.relist()
    producer.tick()
    assert sent == ["j", "j"]  # a new resourceVersion is a new judgement


@pytest.mark.parametrize(
    ("value", "due"),
    [("2w", 100 + 14 * DAY), ("1h30m", 100 + 1.5 * HOUR), ("forever", None), ("soon", None)],
)
def test_ttl_annotation_accepts_weeks_and_forever(value: str, due: float | None) -> None:
    """Main refused `2w` (kube-janitor's week unit); `forever` never expires."""
    obj = job("j", created=100, annotations={"opsq.io/ttl": value})
    decision = planner.evaluate(_rule(), obj, ANNOTATIONS)
    assert decision.due_at == due


def _rule(**when: Any) -> Any:
    return settings(rules=[{"name": "r", "resource": JOBS, "when": when or {"finished": True}}]
                    ).rules[0]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01", "2024-05-01T00:00:00Z"),
        ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z"),
        ("2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00Z"),
        ("2024-05-01T10:00", "2024-05-01T10:00:00Z"),
    ],
)
def test_expires_annotation_takes_a_date_or_rfc3339(value: str, expected: str) -> None:
    obj = job("j", created=0, annotations={"opsq.io/expires": value})
    decision = planner.evaluate(_rule(), obj, ANNOTATIONS)
    assert decision.reason == planner.EXPIRES_ANNOTATION
    assert planner.format_time(decision.due_at or 0) == expected
    bad = job("j", annotations={"opsq.io/expires": "next tuesday"})
    assert planner.evaluate(_rule(), bad, ANNOTATIONS).reason == planner.BAD_EXPIRES


def test_janitor_annotations_count_only_when_enabled() -> None:
    obj = job("j", created=0, annotations={"janitor/ttl": "1d"})
    off = CleanupSettings()
    on = CleanupSettings(janitor_annotations=True)
    assert planner.evaluate(_rule(), obj, planner.Annotations.of(off)).due_at is None
    assert planner.evaluate(_rule(), obj, planner.Annotations.of(on)).due_at == DAY


def test_ttl_only_and_match_rules_need_no_dummy_condition() -> None:
    """Main refused `when: {ttl_annotation: true}` alone (it wanted a dummy condition)."""
    ttl_only = _rule(ttl_annotation=True)
    plain = job("plain", created=0, finished=0)
    annotated = job("tagged", created=0, annotations={"opsq.io/ttl": "1h"})
    assert planner.evaluate(ttl_only, plain, ANNOTATIONS).reason == planner.NO_ANNOTATION
    assert planner.evaluate(ttl_only, annotated, ANNOTATIONS).due_at == HOUR
    matching = _rule(match="metadata.labels.tier == 'preview'", older_than="1h")
    preview = job("p", created=0, labels={"tier": "preview"})
    assert planner.evaluate(matching, preview).due_at == HOUR
    assert planner.evaluate(matching, job("q", created=0)).reason == planner.NOT_MATCHED


def test_notify_before_announces_once_with_a_kubernetes_event(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Job due in 30 min under `notify_before: 1h` gets one Event naming what and when;
    a second run does not announce it again, and nothing is deleted yet."""
    now = time.time()
    add(fake_kube, job("soon", namespace="team-a", created=now - DAY, finished=now - HOUR / 2))
    rule = {"name": "finished-jobs", "resource": JOBS, "notify_before": "1h",
            "when": {"finished": True, "older_than": "1h"}}  # fmt: skip
    config = write_config(rules=[rule])
    argv = ["cleanup", "--local", "--apply", "--config", str(config),
            "--kubeconfig", str(kubeconfig_path())]  # fmt: skip
    assert run_cli(argv) == 0
    assert run_cli(argv) == 0
    capsys.readouterr()
    (event,) = fake_kube.list("v1/events", "team-a")
    assert event["reason"] == "OpsqCleanupScheduled"
    assert event["involvedObject"]["name"] == "soon"
    assert "will be deleted by opsq cleanup rule 'finished-jobs' at" in event["message"]
    assert fake_kube.count("delete") == 0


def test_notify_before_also_goes_through_the_rules_alert_notifiers_once(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`notify: [hook]` sends the heads-up through the monitoring notifier (a webhook)
    besides the Event; the Event marks it announced, so the next run sends nothing."""
    receiver = HttpReceiver().start()
    try:
        now = time.time()
        add(fake_kube, job("soon", namespace="team-a", created=now - DAY, finished=now - HOUR / 2))
        rule = {"name": "finished-jobs", "resource": JOBS, "notify_before": "1h",
                "notify": ["hook"], "when": {"finished": True, "older_than": "1h"}}  # fmt: skip
        config = tmp_path / "opsq.yaml"
        config.write_text(yaml.safe_dump({
            "cleanup": {"rules": [rule]},
            "alerts": {"notifiers": {"hook": {"kind": "webhook", "url": receiver.url}}},
        }))  # fmt: skip
        argv = ["cleanup", "--local", "--apply", "--config", str(config),
                "--kubeconfig", str(kubeconfig_path())]  # fmt: skip
        assert run_cli(argv) == 0
        assert run_cli(argv) == 0
        capsys.readouterr()
        (sent,) = receiver.accepted
        assert "soon" in json.dumps(sent.json)
        assert "will be deleted by opsq cleanup rule 'finished-jobs'" in json.dumps(sent.json)
    finally:
        receiver.stop()


def test_a_rule_naming_an_unknown_notifier_is_exit_2(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rule = {"name": "r", "resource": JOBS, "notify_before": "1h", "notify": ["nope"],
            "when": {"finished": True}}  # fmt: skip
    assert run_cli(["cleanup", "--local", "--config", str(write_config(rules=[rule]))]) == 2
    assert "cleanup.rules[0] (name 'r').notify names unknown notifier" in capsys.readouterr().err


def test_every_real_deletion_is_in_the_audit_trail(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`opsq cleanup audit --since 1h` lists rule, object, uid, who judged and who deleted;
    a dry run adds nothing."""
    created = add(fake_kube, _old_job("audited"))
    base = ["--config", str(write_config()), "--kubeconfig", str(kubeconfig_path())]
    assert run_cli(["cleanup", "--local", *base]) == 0  # dry run
    assert run_cli(["cleanup", "--local", "--apply", *base]) == 0
    capsys.readouterr()
    assert run_cli(["cleanup", "audit", "--since", "1h", "--output", "json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["rule"] == "finished-jobs"
    assert (entry["namespace"], entry["name"]) == ("team-a", "audited")
    assert entry["uid"] == created["metadata"]["uid"]
    assert entry["judged_by"].startswith("opsq cleanup@")
    assert entry["deleted_by"].startswith("opsq cleanup@")
    assert entry["reason"] == planner.JOB_FINISHED
    assert run_cli(["cleanup", "audit", "--since", "1h"]) == 0
    assert "team-a/audited" in capsys.readouterr().out
