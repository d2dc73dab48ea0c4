"""Reminders, maintenance windows and daylight saving, with an injected clock (no sleeps)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import redis

from opsq.core.config.alerts import (
    AlertmanagerNotifier,
    AlertsSettings,
    MaintenanceWindow,
    WebhookNotifier,
)
from opsq.core.config.probes import ProbeSet, Target
from opsq.engines.monitor import alerting
from opsq.engines.monitor.maintenance import active_window, opening
from opsq.engines.monitor.spec import build_spec
from opsq.engines.monitor.store import MonitorStore

BERLIN = ZoneInfo("Europe/Berlin")
HOOK = WebhookNotifier(kind="webhook", url="http://127.0.0.1:1/hook", repeat_interval=600)
T0 = 1_800_000_000.0


def berlin(*args: int) -> float:
    return datetime(*args, tzinfo=BERLIN).timestamp()  # type: ignore[misc]


def transition(to: str = "down", frm: str = "up", at: float = T0) -> dict:
    return {
        "id": "t1",
        "set": "web",
        "target": "api|u",
        "name": "api",
        "url": "u",
        "from_state": frm,
        "to_state": to,
        "at": at,
        "reason": "timeout",
        "detail": None,
        "run_id": "r",
        "locations": {},
    }


def test_reminders_repeat_at_repeat_interval() -> None:
    """Down for 35 min with repeat_interval 10m: reminders at 10, 20 and 30 min, once each."""
    jobs, entry = alerting.on_transition(transition(), "hook", HOOK, None, silenced=False, now=T0)
    assert [j.message["event"] for j in jobs] == ["firing"]
    assert entry is not None
    sent = []
    for minute in range(0, 36):  # a tick every minute, several ticks per interval
        for job in alerting.on_tick(entry, "hook", HOOK, silenced=False, now=T0 + minute * 60):
            sent.append((minute, job.message["event"], job.message["key"]))
    assert [(m, e) for m, e, _ in sent] == [(10, "reminder"), (20, "reminder"), (30, "reminder")]
    assert len({k for _, _, k in sent}) == 3


def test_no_reminders_without_repeat_interval_or_for_degraded() -> None:
    """repeat_interval 0 sends nothing more; degraded targets are not reminded about."""
    quiet = WebhookNotifier(kind="webhook", url="http://x/")
    _, entry = alerting.on_transition(transition(), "q", quiet, None, silenced=False, now=T0)
    assert entry is not None
    assert not alerting.on_tick(entry, "q", quiet, silenced=False, now=T0 + 86400)
    _, entry = alerting.on_transition(
        transition("degraded"), "h", HOOK, None, silenced=False, now=T0
    )
    assert entry is not None
    assert not alerting.on_tick(entry, "h", HOOK, silenced=False, now=T0 + 86400)


def test_a_window_silences_and_the_alert_is_sent_when_it_closes_if_still_down() -> None:
    """Down inside a window: nothing sent, no reminders; once the window closes, one firing."""
    jobs, entry = alerting.on_transition(transition(), "hook", HOOK, None, silenced=True, now=T0)
    assert jobs == []
    assert entry is not None
    assert not entry.notified
    assert alerting.on_tick(entry, "hook", HOOK, silenced=True, now=T0 + 1200) == []
    after = alerting.on_tick(entry, "hook", HOOK, silenced=False, now=T0 + 1300)
    assert [j.message["event"] for j in after] == ["firing"]
    assert entry.notified


def test_recovery_of_a_silenced_alert_sends_nothing() -> None:
    """An outage that began and ended inside a window produces no message at all."""
    _, entry = alerting.on_transition(transition(), "hook", HOOK, None, silenced=True, now=T0)
    jobs, kept = alerting.on_transition(
        transition("up", "down", T0 + 60), "hook", HOOK, entry, silenced=True, now=T0 + 60
    )
    assert jobs == []
    assert kept is None


def test_resolved_follows_send_on_resolved() -> None:
    """A notified alert resolves with a message unless send_on_resolved is off."""
    _, entry = alerting.on_transition(transition(), "hook", HOOK, None, silenced=False, now=T0)
    jobs, _ = alerting.on_transition(
        transition("up", "down", T0 + 60), "hook", HOOK, entry, silenced=False, now=T0 + 60
    )
    assert [j.message["event"] for j in jobs] == ["resolved"]
    mute = WebhookNotifier(kind="webhook", url="http://x/", send_on_resolved=False)
    jobs, _ = alerting.on_transition(
        transition("up", "down", T0 + 60), "m", mute, entry, silenced=False, now=T0 + 60
    )
    assert jobs == []


def test_alertmanager_alerts_are_reposted_every_resend_interval() -> None:
    """Alertmanager gets the firing alert again each resend_interval, each with its own key."""
    am = AlertmanagerNotifier(kind="alertmanager", url="http://x", resend_interval=60)
    _, entry = alerting.on_transition(transition(), "am", am, None, silenced=False, now=T0)
    assert entry is not None
    keys = [
        j.message["key"]
        for s in range(0, 185, 15)
        for j in alerting.on_tick(entry, "am", am, silenced=False, now=T0 + s)
    ]
    assert keys == ["t1:am:repost:1", "t1:am:repost:2", "t1:am:repost:3"]


def test_one_off_window() -> None:
    """A one-off window covers [start, end) and only the sets and targets it names."""
    window = MaintenanceWindow(
        start=datetime(2026, 3, 1, 10, tzinfo=BERLIN),
        end=datetime(2026, 3, 1, 12, tzinfo=BERLIN),
        sets=["web"],
        targets=["db"],
    )
    windows = {"migration": window}
    assert active_window(windows, "web", "db", berlin(2026, 3, 1, 11)) is not None
    assert active_window(windows, "web", "db", berlin(2026, 3, 1, 12)) is None
    assert active_window(windows, "web", "api", berlin(2026, 3, 1, 11)) is None
    assert active_window(windows, "other", "db", berlin(2026, 3, 1, 11)) is None


def test_recurring_berlin_window_across_spring_forward() -> None:
    """02:00-03:00 Berlin daily. 29 March 2026 the clock jumps 02:00 -> 03:00 CEST: before it
    the window is 01:00-02:00 UTC, after it 00:00-01:00 UTC; on the day itself the start
    falls in the skipped hour and opens at the jump (Debian cron), for 1 h of real time."""
    window = MaintenanceWindow(cron="0 2 * * *", duration=3600, timezone="Europe/Berlin")
    utc = ZoneInfo("UTC")

    def u(*args: int) -> float:
        return datetime(*args, tzinfo=utc).timestamp()  # type: ignore[misc]

    assert opening(window, u(2026, 3, 28, 1, 30)) == (u(2026, 3, 28, 1), u(2026, 3, 28, 2))
    assert opening(window, u(2026, 3, 28, 0, 30)) is None
    assert opening(window, u(2026, 3, 29, 1, 30)) == (u(2026, 3, 29, 1), u(2026, 3, 29, 2))
    assert opening(window, u(2026, 3, 29, 0, 59)) is None
    assert opening(window, u(2026, 3, 30, 0, 30)) == (u(2026, 3, 30, 0), u(2026, 3, 30, 1))
    assert opening(window, u(2026, 3, 30, 1, 30)) is None  # would be right without DST


def test_recurring_berlin_window_across_fall_back() -> None:
    """02:30 Berlin for 1 h around 25 October 2026 (03:00 CEST -> 02:00 CET): before, the
    window is 00:30-01:30 UTC; on the day 02:30 happens twice and the window opens once,
    at the first (00:30 UTC); after, it is 01:30-02:30 UTC."""
    window = MaintenanceWindow(cron="30 2 * * *", duration=3600, timezone="Europe/Berlin")
    utc = ZoneInfo("UTC")

    def u(*args: int) -> float:
        return datetime(*args, tzinfo=utc).timestamp()  # type: ignore[misc]

    assert opening(window, u(2026, 10, 24, 1)) == (u(2026, 10, 24, 0, 30), u(2026, 10, 24, 1, 30))
    assert opening(window, u(2026, 10, 25, 1)) == (u(2026, 10, 25, 0, 30), u(2026, 10, 25, 1, 30))
    assert opening(window, u(2026, 10, 25, 1, 45)) is None  # the repeated 02:30 opens nothing
    assert opening(window, u(2026, 10, 26, 2)) == (u(2026, 10, 26, 1, 30), u(2026, 10, 26, 2, 30))
    assert opening(window, u(2026, 10, 26, 1)) is None  # would be right without DST


def test_window_and_reminders_through_applied_runs_and_ticks(redis_client: redis.Redis) -> None:
    """Real Redis, the store's own apply and tick, the clock injected: a target that goes
    down inside a one-off window is recorded (state and transition kept) but nobody is
    told; ticks inside the window send nothing; the first tick after it sends the firing
    message, and reminders then follow every repeat_interval from it (not one at the
    very next tick, which the outage's own 10-minute slot at 31 min used to send)."""
    start = datetime.fromtimestamp(T0, tz=BERLIN)
    alerts = AlertsSettings.model_validate({
        "notifiers": {"hook": {"kind": "webhook", "url": "http://127.0.0.1:1/h",
                               "repeat_interval": "10m"}},
        "maintenance": {"upgrade": {"start": start.isoformat(),
                                    "end": (start + timedelta(minutes=30)).isoformat(),
                                    "sets": ["web"]}},
    })  # fmt: skip
    store = MonitorStore(redis_client, alerts)
    target = Target(name="api", url="http://api/")
    probe_set = ProbeSet(targets=[target.model_dump(mode="json")], failure_threshold=1,
                         success_threshold=1, notify=("hook",))  # fmt: skip

    def apply(run_id: str, at: float, up: bool) -> list[dict]:
        spec = build_spec("web", probe_set, [target], created_at=at)
        store.register(run_id, spec)
        result = {"name": "api", "url": "http://api/", "up": up, "error_kind": "connect"}
        store.apply(run_id, spec, [result], now=at)
        return store.outbox(run_id)

    def tick(minute: int) -> list[str]:
        owners = store.tick(T0 + minute * 60)
        return [job["message"]["key"].split(":", 2)[2] for o in owners for job in store.outbox(o)]

    assert apply("r0", T0 - 60, up=True) == []
    assert apply("r1", T0 + 60, up=False) == []  # inside the window: silenced
    (state,) = store.states(["web"])["web"]
    assert state.state == "down"
    assert [(t["from"], t["to"]) for t in reversed(store.transitions("web"))] == [
        ("unknown", "up"), ("up", "down")]  # fmt: skip
    sent = {minute: tick(minute) for minute in range(2, 56)}
    assert {m: keys for m, keys in sent.items() if keys} == {
        30: ["firing"], 40: ["reminder:3"], 50: ["reminder:4"]}  # fmt: skip
