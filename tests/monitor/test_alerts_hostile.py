"""Issue 12 hostile check: what a hostile SRE found in alerting, each turned into a test."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import yaml

from opsq.core import keys
from opsq.core.config.alerts import AlertsSettings
from opsq.core.config.probes import ProbeSet, Target
from opsq.core.logsetup import URL_LOGGERS, redact_handlers
from opsq.core.runs import batch_message
from opsq.core.targets import EncodedBatch
from opsq.engines.alerts import send_via
from opsq.engines.alerts.delivery import deliver
from opsq.engines.alerts.message import transition_message
from opsq.engines.monitor.queues import drop_expired, expires_at
from opsq.engines.monitor.spec import build_spec
from opsq.engines.monitor.store import MonitorStore
from tests.monitor.conftest import TargetServer, write_config
from tests.pipeline.conftest import run_cli
from tests.support.receivers import HttpReceiver
from tests.support.workers import Worker

SLACK_TOKEN = "B0SECRET/xoxTOKENpath"


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_alerts_test_never_prints_the_slack_url(tmp_path: Path, redis_url: str,
                                                level: str) -> None:  # fmt: skip
    """A Slack URL's path is the secret. `opsq alerts test` at INFO and DEBUG delivers
    and prints the answer, but no line carries the URL (httpx logged
    ``HTTP Request: POST http://.../services/T000/B0SECRET/... "HTTP/1.0 200 OK"``)."""
    receiver = HttpReceiver().start()
    try:
        env = write_config(tmp_path / "opsq.yaml", {"log_level": level, "alerts": {"notifiers": {
            "ops-slack": {"kind": "slack", "url": f"{receiver.url}/services/T000/{SLACK_TOKEN}"},
        }}})  # fmt: skip
        done = run_cli(["alerts", "test", "ops-slack"], redis_url, env=env)
        assert done.returncode == 0, done.stderr
        assert "ops-slack (slack): HTTP 200" in done.stdout
        assert len(receiver.accepted) == 1
        output = done.stdout + done.stderr
        assert "B0SECRET" not in output, output
        assert "xoxTOKEN" not in output, output
    finally:
        receiver.stop()


def test_celery_logging_setup_holds_url_loggers_at_warning() -> None:
    """Workers and beat run with Celery's own handlers (made redacting by
    ``redact_handlers``); the URL-logging libraries are held at WARNING there too, so
    ``celery -A tasks worker -l INFO`` does not log a notifier's URL either."""
    for name in URL_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    redact_handlers(logging.getLogger("celery.hostile-check"))
    for name in URL_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name


CONFIG = {
    "alerts": {"notifiers": {"am": {"kind": "alertmanager", "url": "http://127.0.0.1:1"}}},
    "probes": {"sets": {"web": {"file": "web-targets.yaml", "notify": ["am"],
                                "locations": ["a", "b", "c"]}}},
}  # fmt: skip


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"notify": ["pager"]},
         "(set web): field targets[1] (name 'db').notify names unknown notifier(s) ['pager']"),
        ({"failure_threshold": 0},
         "field targets[1] (name 'db').failure_threshold: Input should be greater than or equal"),
        ({"expect": {"degraded_latency": "-1s"}},
         "field targets[1] (name 'db').expect.degraded_latency: a duration cannot be negative"),
    ],
    ids=["unknown-notifier", "threshold-0", "negative-degraded-latency"],
)  # fmt: skip
def test_config_check_validates_the_targets_file(
    tmp_path: Path, override: dict, expected: str
) -> None:
    """The README's layout: the set in opsq.yaml, per-target overrides in its targets
    file. A mistake in the file exits 2 naming the file and the field (`opsq config
    check` said "configuration OK" and beat then refused every run of the set)."""
    targets = [{"name": "api", "url": "http://127.0.0.1:1/healthz"},
               {"name": "db", "url": "tcp://127.0.0.1:1", **override}]  # fmt: skip
    (tmp_path / "web-targets.yaml").write_text(yaml.safe_dump({"targets": targets}))
    (tmp_path / "opsq.yaml").write_text(yaml.safe_dump(CONFIG))
    done = run_cli(["config", "check", "--config", str(tmp_path / "opsq.yaml")],
                   "redis://127.0.0.1:1/0")  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(tmp_path / "web-targets.yaml") in done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    targets[1] = {"name": "db", "url": "tcp://127.0.0.1:1", "notify": ["am"]}
    (tmp_path / "web-targets.yaml").write_text(yaml.safe_dump({"targets": targets}))
    done = run_cli(["config", "check", "--config", str(tmp_path / "opsq.yaml")],
                   "redis://127.0.0.1:1/0")  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "configuration OK\n"), done.stderr


def test_the_target_key_sent_to_a_webhook_hides_the_urls_secrets() -> None:
    """A transition's ``target`` is ``name|url`` with the probed URL as written: the
    webhook body carried ``transition.target`` unredacted (password and ``?token=``)
    while ``url`` next to it was redacted."""
    receiver = HttpReceiver().start()
    try:
        config = AlertsSettings.model_validate(
            {"notifiers": {"hook": {"kind": "webhook", "url": f"{receiver.url}/hook"}}}
        )
        url = "https://ops:pw-17@api.example.com/health?access_token=tok-17"
        transition = {"id": "t1", "set": "web", "target": f"api|{url}", "name": "api",
                      "url": url, "from_state": "up", "to_state": "down", "at": 1.8e9,
                      "reason": "status", "run_id": "r1", "locations": {}}  # fmt: skip
        send_via(config, "hook", transition_message(transition, "k", "firing", now=1.8e9))
        (got,) = receiver.accepted
        body = got.body.decode()
        assert "tok-17" not in body
        assert "pw-17" not in body
        sent = got.json["transition"]["target"]
        assert sent == "api|https://ops:***@api.example.com/health?access_token=***"
    finally:
        receiver.stop()


def test_status_never_prints_a_targets_password_or_token(
    redis_url: str, tmp_path: Path, target_server: TargetServer,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    """A target probed as ``http://ops:pw-17@host/svc?token=tok-17``: `opsq status`, as
    a table and as JSON, shows the target without them (the JSON printed the URL as
    written, password and token included)."""
    port = target_server.url.rsplit(":", 1)[1]
    svc = {"name": "svc", "url": f"http://ops:pw-17@127.0.0.1:{port}/svc?token=tok-17",
           "timeout": "2s"}  # fmt: skip
    env = write_config(tmp_path / "opsq.yaml", {"probes": {"sets": {"web": {
        "interval": 3600, "failure_threshold": 1, "targets": [svc]}}}})  # fmt: skip
    start_worker(env=env, concurrency=1)
    ran = run_cli(["probe", "--set", "web", "--wait", "--timeout", "60"], redis_url, env=env)
    assert ran.returncode == 0, ran.stderr
    table = run_cli(["status"], redis_url, env=env)
    as_json = run_cli(["status", "--output", "json"], redis_url, env=env)
    (state,) = json.loads(as_json.stdout)["web"]
    assert state["url"] == f"http://ops:***@127.0.0.1:{port}/svc?token=***"
    assert "svc" in table.stdout
    for output in (table.stdout, table.stderr, as_json.stdout, as_json.stderr):
        assert "pw-17" not in output
        assert "tok-17" not in output


def test_a_late_firing_message_is_not_sent_after_the_target_recovered(
    redis_client: redis.Redis, receiver: HttpReceiver
) -> None:
    """Slack answered 500 through an outage, the target recovered and the resolved
    message got through first; the firing message's retry then arrived last, leaving
    the channel saying DOWN about a target that was up (the same for reminders, and for
    a worker's task redelivered after its visibility timeout). Now the stale firing
    message is dropped as ``superseded``; a firing message of the target's current
    transition is still sent."""
    alerts = AlertsSettings.model_validate(
        {"notifiers": {"hook": {"kind": "webhook", "url": f"{receiver.url}/hook"}}}
    )
    store = MonitorStore(redis_client, alerts)
    targets = [Target(name="api", url="http://api/")]
    probe_set = ProbeSet(targets=[t.model_dump(mode="json") for t in targets],
                         failure_threshold=1, success_threshold=1, notify=("hook",))  # fmt: skip

    def run(run_id: str, up: bool, at: float) -> dict | None:
        spec = build_spec("web", probe_set, targets, created_at=at)
        store.register(run_id, spec)
        result = {"name": "api", "url": "http://api/", "location": "default", "up": up,
                  "error_kind": "connect", "error": "refused"}  # fmt: skip
        store.apply(run_id, spec, [result], now=at + 1)
        jobs = store.outbox(run_id)
        assert len(jobs) <= 1, jobs
        return jobs[0] if jobs else None

    assert run("r0", True, 100.0) is None  # a new target's first verdict notifies nothing
    firing, resolved = run("r1", False, 200.0), run("r2", True, 300.0)
    assert firing is not None
    assert resolved is not None
    assert (firing["message"]["event"], resolved["message"]["event"]) == ("firing", "resolved")

    assert deliver(redis_client, alerts, resolved, task_id="t2").result == "sent"
    assert deliver(redis_client, alerts, firing, task_id="t1").result == "superseded"
    assert [x.json["event"] for x in receiver.accepted] == ["resolved"]

    again = run("r3", False, 400.0)
    assert again is not None
    assert deliver(redis_client, alerts, again, task_id="t3").result == "sent"
    assert [x.json["event"] for x in receiver.accepted] == ["resolved", "firing"]


def test_expired_batches_of_a_stopped_location_are_dropped(redis_client: redis.Redis) -> None:
    """A location whose worker stopped kept every batch of every run in its queue (Celery
    drops an expired message only when a worker pops it): 8 after 40 s at a 5 s
    interval in the live check, ~2 GB a week at 1,000 targets every 30 s. The tick's
    sweep removes the expired batches from the tail and keeps the ones still due."""
    queue = keys.location_queue("us-east")
    now = 1_800_000_000.0
    batch = EncodedBatch(offset=0, count=1, targets_json=b'[{"name":"a","url":"http://a/"}]')
    for number, expires in enumerate([now - 60, now - 30, now - 1, now + 30]):
        _, message = batch_message(f"r{number}", 0, batch, location="us-east", expires=expires)
        redis_client.lpush(queue, message)  # as kombu publishes: LPUSH, workers BRPOP
    assert drop_expired(redis_client, queue, now) == 3
    (left,) = redis_client.lrange(queue, 0, -1)
    assert expires_at(left) == now + 30
    assert drop_expired(redis_client, queue, now) == 0
    assert drop_expired(redis_client, keys.location_queue("nobody"), now) == 0


@pytest.mark.parametrize(
    ("elapsed", "said"), [(30.0, "after 30s"), (600.0, "after 10 min"), (11_100.0, "after 3h 05m")]
)
def test_a_reminder_says_how_long_the_target_has_been_down(elapsed: float, said: str) -> None:
    """A reminder 30 s after the transition (``repeat_interval: 30s``) said "after 0 min"."""
    transition = {"id": "t1", "set": "web", "target": "api|http://api/", "name": "api",
                  "url": "http://api/", "from_state": "up", "to_state": "down", "at": 1.8e9,
                  "reason": "status", "run_id": "r1", "locations": {}}  # fmt: skip
    message = transition_message(transition, "k", "reminder", now=1.8e9 + elapsed)
    assert message.title == f"[REMINDER] web/api is still DOWN (status) {said}"
