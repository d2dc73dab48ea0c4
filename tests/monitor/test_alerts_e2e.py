"""Alerts end to end: real workers, real beat, real Alertmanager and real receivers."""

from __future__ import annotations

import re
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from opsq.core import keys, signatures
from opsq.core.settings import load_settings
from producers.probes import close_producer_app, producer_app
from tests.monitor.conftest import (
    Alertmanager,
    TargetServer,
    target_state,
    wait_for,
    write_config,
)
from tests.pipeline.conftest import run_cli
from tests.support.receivers import HttpReceiver, SmtpReceiver
from tests.support.workers import Worker


def verdict_history(redis_url: str, set_name: str, target_key: str) -> list[tuple[str, str]]:
    """(run_id, verdict) of every applied run of the set, in the order they were applied."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = client.xrange(keys.MONITOR_VERDICTS)
    finally:
        client.close()
    found = [(f["run_id"], orjson.loads(f["verdicts"]).get(target_key))
             for _, f in entries if f["set"] == set_name]  # fmt: skip
    return [(run_id, verdict[0]) for run_id, verdict in found if verdict is not None]


def transitions(redis_url: str, set_name: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [f for _, f in client.xrange(keys.monitor_transitions(set_name))]
    finally:
        client.close()


def streak_before(history: list[tuple[str, str]], run_id: str) -> list[str]:
    """The verdicts up to and including *run_id*."""
    runs = [r for r, _ in history]
    return [v for _, v in history[: runs.index(run_id) + 1]]


@pytest.mark.slow
def test_thresholds_degraded_and_alertmanager_through_beat_runs(
    redis_url: str, tmp_path: Path, target_server: TargetServer, receiver: HttpReceiver,
    alertmanager: Callable[[HttpReceiver], Alertmanager],
    start_worker: Callable[..., Worker], start_beat: Callable[[dict[str, str]], None],
) -> None:  # fmt: skip
    """Beat runs a set every second. A slow target turns degraded after failure_threshold
    (2) runs; svc turns down exactly at its 2nd consecutive failing run and up again at
    its 2nd passing one. Alertmanager lists the alert as active, then (endsAt posted on
    recovery) notifies it resolved and drops it; the webhook gets one message each."""
    am = alertmanager(receiver)
    target_server.slow_s = 0.3
    env = write_config(tmp_path / "opsq.yaml", {
        "probes": {"sets": {"web": {
            "interval": 1, "deadline": "20s", "failure_threshold": 2, "success_threshold": 2,
            "notify": ["am", "hook"],
            "targets": [
                {"name": "svc", "url": f"{target_server.url}/svc", "timeout": "2s"},
                {"name": "slowish", "url": f"{target_server.url}/slow", "timeout": "3s",
                 "expect": {"degraded_latency": "100ms"}},
            ]}}},
        "alerts": {"tick_interval": 1, "notifiers": {
            "am": {"kind": "alertmanager", "url": am.url, "resend_interval": 60},
            "hook": {"kind": "webhook", "url": f"{receiver.url}/hook"}}},
    })  # fmt: skip
    start_worker(env=env)
    start_beat(env)
    svc, svc_key = "svc", f"svc|{target_server.url}/svc"
    wait_for(lambda: (s := target_state(redis_url, "web", svc)) and s.state == "up", 60,
             "svc up")  # fmt: skip
    slow = wait_for(lambda: (s := target_state(redis_url, "web", "slowish"))
                    and s.state == "degraded" and s, 60, "slowish degraded")  # fmt: skip
    assert slow.reason == "latency"

    target_server.codes["/svc"] = 503
    down = wait_for(lambda: (s := target_state(redis_url, "web", svc)) and s.state == "down"
                    and s, 60, "svc down")  # fmt: skip
    assert down.reason == "status"
    went_down = next(t for t in transitions(redis_url, "web") if t["to"] == "down")
    streak = streak_before(verdict_history(redis_url, "web", svc_key), went_down["run_id"])
    assert streak[-3:] == ["up", "down", "down"], streak  # exactly at the 2nd failure

    active = wait_for(
        lambda: [a for a in am.alerts() if a["labels"].get("opsq_target") == svc], 30, "alert in AM"
    )
    assert active[0]["labels"]["alertname"] == "OpsqTargetDown"
    assert active[0]["status"]["state"] == "active"
    assert active[0]["labels"]["opsq_set"] == "web"

    target_server.codes["/svc"] = 200
    wait_for(lambda: (s := target_state(redis_url, "web", svc)) and s.state == "up", 60,
             "svc up again")  # fmt: skip
    came_back = [t for t in transitions(redis_url, "web") if t["name"] == svc][-1]
    assert (came_back["from"], came_back["to"]) == ("down", "up")
    streak = streak_before(verdict_history(redis_url, "web", svc_key), came_back["run_id"])
    assert streak[-3:] == ["down", "up", "up"], streak

    def am_resolved() -> bool:
        told = [r.json for r in receiver.accepted if r.path == "/alertmanager"]
        return any(
            m["status"] == "resolved"
            and any(a["labels"].get("opsq_target") == svc for a in m["alerts"])
            for m in told
        )

    wait_for(am_resolved, 30, "Alertmanager's own resolved notification")
    assert not [a for a in am.alerts() if a["labels"].get("opsq_target") == svc]
    hook = [r.json for r in receiver.accepted if r.path == "/hook"]
    svc_events = [m["event"] for m in hook if m["labels"]["target"] == svc]
    assert svc_events == ["firing", "resolved"]


def send_set(settings_env: dict[str, str], redis_url: str, name: str) -> None:
    settings = load_settings(settings_env["OPSQ_CONFIG"], redis_url=redis_url)
    app = producer_app(settings)
    try:
        app.send_task(signatures.PROBE_SET, kwargs={"name": name})
    finally:
        close_producer_app(app)


FAST_REDELIVERY = {"OPSQ_VISIBILITY_TIMEOUT": "6", "OPSQ_PROBES__SOFT_TIME_LIMIT": "4",
                   "OPSQ_PROBES__TIME_LIMIT": "5"}  # fmt: skip


@pytest.mark.slow
def test_one_notification_per_transition_despite_kill_9(
    redis_url: str, tmp_path: Path, target_server: TargetServer, receiver: HttpReceiver,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    """The receiver holds the first notifications open; the worker delivering them is
    killed with -9, and the receiver answers once every process of it is dead (so its
    2xx cannot reach a sender that is still dying: that would be the window a keyed
    re-send covers, not a delivery bug). After redelivery, every (transition, notifier)
    key was acknowledged by the receiver exactly once, webhook and Slack alike, and a
    held key really was sent twice (the redelivered task re-sent the same key, taking
    over the claim of the killed holder)."""
    receiver.hold = threading.Event()
    target_server.codes["/svc"] = 503
    env = {**FAST_REDELIVERY, **write_config(tmp_path / "opsq.yaml", {
        "probes": {"sets": {"web": {
            "interval": 3600, "failure_threshold": 1, "success_threshold": 1,
            "notify": ["hook", "slack"],
            "targets": [{"name": "svc", "url": f"{target_server.url}/svc", "timeout": "2s"}]}}},
        # A generous timeout: a sender that gives up on a slow (loaded) receiver after it
        # accepted re-sends the same key by design (receivers dedupe on it); that window
        # is not what this test is about.
        "alerts": {"notifiers": {
            "hook": {"kind": "webhook", "url": f"{receiver.url}/hook", "secret": "k",
                     "timeout": "20s"},
            "slack": {"kind": "slack", "url": f"{receiver.url}/slack/T/B/X", "timeout": "20s"}}},
    })}  # fmt: skip
    first = start_worker(env=env)
    send_set(env, redis_url, "web")
    receiver.wait_for(lambda r: len(r.received) >= 1, 60)
    first.kill9()
    assert receiver.wait_held_gone(), "a held request's connection stayed open"
    receiver.hold.set()
    second = start_worker(env=env)
    receiver.wait_for(lambda r: len({x.key for x in r.accepted}) >= 2, 90)

    target_server.codes["/svc"] = 200
    send_set(env, redis_url, "web")
    receiver.wait_for(lambda r: len({x.key for x in r.accepted}) >= 4, 60)
    wait_for(lambda: _alerts_queue_drained(redis_url), 30, "alerts queue drained")

    accepted = Counter(x.key for x in receiver.accepted)
    # On failure, what the redelivering worker said (retries, claim take-overs, errors).
    said = "\n".join(
        line
        for line in second.log().splitlines()
        if any(word in line for word in ("notification", "claim", "ERROR", "WARN"))
    )
    said = said[-6000:]
    assert len(accepted) == 4, (accepted, said)  # 2 transitions x 2 notifiers
    assert set(accepted.values()) == {1}, (accepted, said)
    assert sorted(k.rsplit(":", 1)[1] for k in accepted) == ["firing", "firing", "resolved",
                                                             "resolved"]  # fmt: skip
    sent = Counter(x.key for x in receiver.received + receiver.accepted)
    assert max(sent.values()) >= 2, "no notification was in flight when the worker died"
    # The redelivered task found its claim held by a dead process and took it over at
    # once (a live holder, e.g. a second copy of a running task, is waited for).
    assert "took over the claim" in second.log()
    assert {x.path for x in receiver.accepted} == {"/hook", "/slack/T/B/X"}


def _alerts_queue_drained(redis_url: str) -> bool:
    client = redis.Redis.from_url(redis_url)
    try:
        return client.llen(keys.QUEUE_ALERTS) == 0 and client.hlen("unacked") == 0
    finally:
        client.close()


def test_alerts_test_command_reaches_smtp_over_starttls(tmp_path: Path, redis_url: str) -> None:
    """`opsq alerts test mail` sends through aiosmtpd (STARTTLS + AUTH) and prints the
    server's answer; a notifier that does not exist exits 2 naming it."""
    smtp = SmtpReceiver().start()
    try:
        env = write_config(tmp_path / "opsq.yaml", {"alerts": {"notifiers": {"mail": {
            "kind": "email", "host": "127.0.0.1", "port": smtp.port, "username": "opsq",
            "password": "s3cret-pw", "sender": "opsq@example.com", "to": ["oncall@example.com"],
            "ca_file": smtp.ca_file(tmp_path)}}}})  # fmt: skip
        done = run_cli(["alerts", "test", "mail"], redis_url, env=env)
        assert done.returncode == 0, done.stderr
        assert "mail (email): 1 recipient(s): 250 Message accepted for delivery" in done.stdout
        (mail,) = smtp.messages
        assert mail["Subject"] == "opsq test notification for notifier 'mail'"
        assert "s3cret-pw" not in done.stdout + done.stderr
        missing = run_cli(["alerts", "test", "pager"], redis_url, env=env)
        assert missing.returncode == 2
        assert "notifier 'pager' is not defined under alerts.notifiers" in missing.stderr
    finally:
        smtp.stop()


@pytest.mark.slow
def test_email_notifier_gets_the_transition_through_a_worker(
    redis_url: str, tmp_path: Path, target_server: TargetServer,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    """A set naming an email notifier: the worker that applies the run sends the firing
    message over SMTP (STARTTLS, AUTH) to aiosmtpd, keyed by the transition, and the
    resolved one when the target is back; the password is in no log line."""
    smtp = SmtpReceiver().start()
    try:
        target_server.codes["/svc"] = 503
        env = write_config(tmp_path / "opsq.yaml", {
            "probes": {"sets": {"web": {
                "interval": 3600, "failure_threshold": 1, "success_threshold": 1,
                "notify": ["mail"],
                "targets": [{"name": "svc", "url": f"{target_server.url}/svc",
                             "timeout": "2s"}]}}},
            "alerts": {"notifiers": {"mail": {
                "kind": "email", "host": "127.0.0.1", "port": smtp.port, "username": "opsq",
                "password": "s3cret-pw", "sender": "opsq@example.com",
                "to": ["oncall@example.com"], "ca_file": smtp.ca_file(tmp_path)}}},
        })  # fmt: skip
        worker = start_worker(env=env)
        send_set(env, redis_url, "web")
        wait_for(lambda: len(smtp.messages) >= 1, 60, "the firing mail")
        target_server.codes["/svc"] = 200
        send_set(env, redis_url, "web")
        wait_for(lambda: len(smtp.messages) >= 2, 60, "the resolved mail")
        wait_for(lambda: _alerts_queue_drained(redis_url), 30, "alerts queue drained")

        firing, resolved = smtp.messages
        assert firing["Subject"] == "[DOWN] web/svc (status)"
        assert firing["X-Opsq-Key"].endswith(":mail:firing")
        assert resolved["X-Opsq-Key"].endswith(":mail:resolved")  # keyed by the recovery
        assert "web/svc" in resolved["Subject"]
        assert smtp.logins == ["opsq", "opsq"]
        assert "s3cret-pw" not in worker.log()
    finally:
        smtp.stop()


@pytest.mark.slow
def test_a_set_run_is_applied_batch_by_batch_by_real_workers(
    redis_url: str, tmp_path: Path, target_server: TargetServer, receiver: HttpReceiver,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    """12 targets in batches of 3 (4 batches) and a worker with two processes: once the
    set has history, each batch's verdicts are applied by the worker that probed it (a
    verdicts entry per batch) and the run's end only closes the run. The 4 failing
    targets go down, each with one firing notification, received once."""
    target_server.codes["/down"] = 503
    env = {"OPSQ_PROBES__BATCH_SIZE": "3", **write_config(tmp_path / "opsq.yaml", {
        "probes": {"sets": {"web": {
            "interval": 3600, "failure_threshold": 1, "success_threshold": 1,
            "notify": ["hook"],
            "targets": [{"name": f"t{i}", "timeout": "2s",
                         "url": f"{target_server.url}/{'down' if i % 3 == 0 else 'ok'}"}
                        for i in range(12)]}}},
        "alerts": {"notifiers": {"hook": {"kind": "webhook", "url": f"{receiver.url}/hook"}}},
    })}  # fmt: skip
    start_worker(env=env)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        by_batches = None
        for number in range(1, 4):  # the set's first run (no history yet) is applied whole
            send_set(env, redis_url, "web")
            wait_for(lambda n=number: len(client.keys(keys.monitor_applied("*"))) == n, 60,
                     f"run {number} applied")  # fmt: skip
            entries = [f for _, f in client.xrange(keys.MONITOR_VERDICTS)]
            run_id = entries[-1]["run_id"]
            parts = [f["part"] for f in entries if f["run_id"] == run_id]
            if "" not in parts:
                by_batches = parts
                break
        assert by_batches is not None, "no run was applied batch by batch"
        assert sorted(by_batches) == [f"{run_id}#b{n}" for n in range(4)], by_batches
        states = [orjson.loads(v) for v in client.hgetall(keys.monitor_state("web")).values()]
        assert {s["last_run"] for s in states} == {run_id}
        assert sorted(s["state"] for s in states) == ["down"] * 4 + ["up"] * 8
        assert not client.exists(keys.monitor_parts(run_id))
    finally:
        client.close()
    wait_for(lambda: len(receiver.accepted) >= 4 and _alerts_queue_drained(redis_url), 30,
             "4 notifications")  # fmt: skip
    firing = Counter(r.json["labels"]["target"] for r in receiver.accepted)
    assert firing == {f"t{i}": 1 for i in (0, 3, 6, 9)}
    assert {r.json["event"] for r in receiver.accepted} == {"firing"}


def notification_counts(worker: Worker) -> dict[tuple[str, str], float]:
    """opsq_notifications_total by (notifier, result), as the worker's /metrics shows it."""
    port = re.search(r"opsq worker metrics on http://[\d.]+:(\d+)/metrics", worker.log())
    assert port is not None, worker.log()
    with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.findall(r'^opsq_notifications_total\{notifier="(\w+)",result="(\w+)"\} (\S+)$',
                       text, re.MULTILINE)  # fmt: skip
    return {(notifier, result): float(value) for notifier, result, value in found}


@pytest.mark.slow
def test_failed_and_dropped_notifications_are_counted_and_logged(
    redis_url: str, tmp_path: Path, target_server: TargetServer,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    """A target goes down; its three notifiers' receivers refuse it for good (400: failed,
    not retried), fail it for good (503: retried, then dropped with alerts.max_retries
    1) and accept it but never answer (the notifier's 1 s timeout ends each try:
    retried, then dropped). Each outcome is counted in opsq_notifications_total by
    notifier and result, and logged with its reason."""
    refusing, failing = HttpReceiver(status=400).start(), HttpReceiver(status=503).start()
    silent = HttpReceiver(hold=threading.Event()).start()
    target_server.codes["/svc"] = 503
    env = {**write_config(tmp_path / "opsq.yaml", {
        "probes": {"sets": {"web": {
            "interval": 3600, "failure_threshold": 1, "notify": ["refusing", "failing", "silent"],
            "targets": [{"name": "svc", "url": f"{target_server.url}/svc", "timeout": "2s"}]}}},
        "alerts": {"max_retries": 1, "retry_backoff_base": "100ms", "retry_backoff_cap": "200ms",
                   "notifiers": {
            "refusing": {"kind": "webhook", "url": f"{refusing.url}/hook"},
            "failing": {"kind": "webhook", "url": f"{failing.url}/hook"},
            "silent": {"kind": "webhook", "url": f"{silent.url}/hook", "timeout": "1s"}}},
    })}  # fmt: skip
    try:
        worker = start_worker(env=env)
        send_set(env, redis_url, "web")
        want = {("refusing", "failed"): 1.0, ("failing", "retried"): 1.0,
                ("failing", "dropped"): 1.0, ("silent", "retried"): 1.0,
                ("silent", "dropped"): 1.0}  # fmt: skip
        wait_for(lambda: want.items() <= notification_counts(worker).items(), 90,
                 "every notification counted")  # fmt: skip
        assert not {k: v for k, v in notification_counts(worker).items()
                    if k[1] == "sent" and v}  # fmt: skip
        log = worker.log()
        assert re.search(r"notification \S+:refusing:firing failed, not retried: .*400", log), log
        assert re.search(r"notification \S+:failing:firing dropped after 1 retries: .*503", log)
        assert re.search(r"notification \S+:silent:firing dropped after 1 retries: notifier "
                         r"'silent' \(webhook\): timeout after 1s", log), log  # fmt: skip
        assert len(silent.received) == 2
    finally:
        for server in (refusing, failing, silent):
            server.stop()
