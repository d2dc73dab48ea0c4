"""What a notifier sends: :class:`Message`, built from a transition or given directly.

One shape for every kind (webhook, Slack, Alertmanager, email) and every sender (state
transitions, reminders, ``opsq alerts test``, the cleanup's ``notify_before``). It is
JSON-safe (:meth:`Message.to_dict`) because it travels as the kwargs of the
``opsq.notify`` Celery task.

``key`` is the idempotency key: one per (transition or reminder, notifier). The
delivery task sends a key at most once after a success, webhooks carry it in an
``Idempotency-Key`` header and emails in their Message-ID, so a receiver can drop
the duplicate that a crash between "sent" and "recorded as sent" can cause.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from opsq.core.records import Record
from opsq.core.redact import redact_text, redact_url

Event = Literal["firing", "resolved", "reminder", "test", "notice"]
Severity = Literal["critical", "warning", "info"]
SEVERITY_OF_STATE: dict[str, Severity] = {"down": "critical", "degraded": "warning"}


@dataclass(frozen=True)
class Message(Record):
    key: str
    event: Event
    title: str
    text: str
    severity: Severity = "info"
    labels: dict[str, str] = field(default_factory=dict)
    """Identity of what the message is about (``set``, ``target``, ``state``...)."""
    starts_at: float | None = None
    ends_at: float | None = None
    """Set for ``resolved``: when the problem ended."""
    data: dict[str, Any] = field(default_factory=dict)
    """The transition (or other payload) behind the message, for webhook receivers."""


def iso(ts: float) -> str:
    """RFC 3339 in UTC with milliseconds, as Alertmanager and most receivers expect."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def transition_message(
    transition: dict[str, Any], key: str, event: Event, *, now: float
) -> Message:
    """The message for a state transition (or a reminder of one).

    Target URLs and error details leave opsq redacted (a ``?token=`` in a probed URL
    must not land in Slack or a webhook receiver's logs).
    """
    transition = _redacted(transition)
    name, to_state = transition["name"], transition["to_state"]
    alert_state = to_state if event != "resolved" else transition["from_state"]
    reason = transition.get("reason") or ""
    title = _title(event, transition, now)
    lines = [
        f"target: {name} ({transition['url']})",
        f"set: {transition['set']}",
        f"state: {transition['from_state']} -> {to_state} at {iso(transition['at'])}",
        f"reason: {reason}" + (f": {transition['detail']}" if transition.get("detail") else ""),
    ]
    locations = transition.get("locations") or {}
    for location, result in sorted(locations.items()):
        lines.append(f"  {location}: {result.get('verdict')} ({result.get('reason')})")
    return Message(
        key=key, event=event, title=title, text="\n".join(lines),
        severity="info" if event == "resolved" else SEVERITY_OF_STATE.get(alert_state, "info"),
        labels={"set": transition["set"], "target": name, "url": transition["url"],
                "state": to_state, "alert_state": alert_state},
        starts_at=transition.get("since", transition["at"]),
        ends_at=transition["at"] if event == "resolved" else None,
        data={"transition": transition},
    )  # fmt: skip


def _redacted(transition: dict[str, Any]) -> dict[str, Any]:
    detail, target = transition.get("detail"), transition.get("target")
    url = str(transition.get("url") or "")
    return {
        **transition,
        "url": redact_url(url),
        "detail": redact_text(detail) if isinstance(detail, str) else detail,
        # The target key is ``name|url``: the raw URL, token and password included.
        "target": _redacted_target(target, str(transition.get("name")), url),
    }


def _redacted_target(target: Any, name: str, url: str) -> Any:
    if not isinstance(target, str):
        return target
    if target == f"{name}|{url}":
        return f"{name}|{redact_url(url)}"
    return redact_text(target)


def _lasted(seconds: float) -> str:
    """``45s``, ``12 min``, ``3h 05m``: floored minutes said "after 0 min" for reminders
    under a minute (a ``repeat_interval`` of 30s)."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _title(event: Event, transition: dict[str, Any], now: float) -> str:
    where = f"{transition['set']}/{transition['name']}"
    state, reason = transition["to_state"], transition.get("reason") or ""
    if event == "resolved":
        return f"[RESOLVED] {where}: {transition['from_state']} -> {state}"
    if event == "reminder":
        lasted = _lasted(now - transition["at"])
        return f"[REMINDER] {where} is still {state.upper()} ({reason}) after {lasted}"
    return f"[{state.upper()}] {where} ({reason})"


def trial_message(notifier: str, now: float) -> Message:
    """What ``opsq alerts test`` sends: clearly a test, never confused with an outage."""
    return Message(
        key=f"test:{notifier}:{int(now * 1000)}", event="test",
        title=f"opsq test notification for notifier {notifier!r}",
        text=f"This is a test sent by `opsq alerts test {notifier}` at {iso(now)}.",
        severity="info", labels={"set": "opsq-test", "target": notifier, "state": "test",
                                  "alert_state": "test"},
        starts_at=now, ends_at=now + 300,
    )  # fmt: skip


def notice(key: str, title: str, text: str, *, labels: dict[str, str] | None = None,
           severity: Severity = "info", now: float | None = None) -> Message:  # fmt: skip
    """A free-form message (a heads-up, not a state change). *key* makes it idempotent:
    the same key is delivered once through the ``opsq.notify`` task."""
    return Message(key=key, event="notice", title=title, text=text, severity=severity,
                   labels={"alert_state": "notice", **(labels or {})}, starts_at=now)  # fmt: skip
