"""Which notifications a transition or a tick causes: pure decisions, clock injected.

For each (set, target, notifier) whose target is ``down`` or ``degraded``, a *firing
entry* remembers the transition that started it, whether it was notified (a window may
have silenced it), when it was last sent and how many reminders went out. Decisions:

- **Into down/degraded**: a ``firing`` message, unless a maintenance window silences
  it; the entry is kept either way. Alertmanager also gets the previous alert resolved
  when ``degraded`` turns ``down`` (they are two alerts, two alertnames).
- **Back to up**: a ``resolved`` message if the alert was notified and
  ``send_on_resolved`` is on; Alertmanager always gets ``endsAt`` for an alert it
  holds, even inside a window (else it would resolve it by itself later anyway).
- **Tick** (beat, every ``alerts.tick_interval``): a silenced alert still firing when
  its window closes is notified then; a ``down`` alert gets a ``reminder`` each
  ``repeat_interval``; Alertmanager gets each firing alert re-posted each
  ``resend_interval``.

Keys: ``<transition>:<notifier>:firing|resolved``, ``...:reminder:<n>`` for the n-th
reminder, ``...:repost:<n>``: the same decision taken twice (two ticks racing, a
redelivered task) gives the same key, and the delivery sends a key once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opsq.core.config.alerts import AlertmanagerNotifier, NotifierBase
from opsq.core.records import Record
from opsq.engines.alerts.message import Event, transition_message

ALERTING_STATES = ("down", "degraded")


@dataclass
class FiringEntry(Record):
    transition: dict[str, Any]
    alert_state: str
    notified: bool
    last_sent: float
    reminders: int = 0


@dataclass(frozen=True)
class Job:
    """One notification to deliver: the ``opsq.notify`` task's kwargs."""

    notifier: str
    message: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"notifier": self.notifier, "message": self.message}


def _job(notifier: str, transition: dict[str, Any], event: Event, key: str, now: float) -> Job:
    return Job(notifier, transition_message(transition, key, event, now=now).to_dict())


def on_transition(
    transition: dict[str, Any], notifier: str, config: NotifierBase,
    previous: FiringEntry | None, *, silenced: bool, now: float,
) -> tuple[list[Job], FiringEntry | None]:  # fmt: skip
    """Jobs for one transition and notifier, and the firing entry to keep (None: drop)."""
    jobs: list[Job] = []
    base = f"{transition['id']}:{notifier}"
    is_am = isinstance(config, AlertmanagerNotifier)
    if previous is not None and previous.notified and (is_am or transition["to_state"] == "up"):
        resolve = is_am or (config.send_on_resolved and not silenced)
        if resolve:
            ended = {**previous.transition, "to_state": transition["to_state"],
                     "at": transition["at"], "since": previous.transition["at"]}  # fmt: skip
            ended["from_state"] = previous.alert_state
            jobs.append(_job(notifier, ended, "resolved", f"{base}:resolved", now))
    if transition["to_state"] not in ALERTING_STATES:
        return jobs, None
    entry = FiringEntry(transition, transition["to_state"], not silenced, now if not silenced
                        else 0.0)  # fmt: skip
    if not silenced:
        jobs.append(_job(notifier, transition, "firing", f"{base}:firing", now))
    return jobs, entry


def on_tick(
    entry: FiringEntry, notifier: str, config: NotifierBase, *, silenced: bool, now: float
) -> list[Job]:
    """Jobs due now for a firing entry; updates *entry* in place (caller stores it)."""
    transition = entry.transition
    base = f"{transition['id']}:{notifier}"
    if not entry.notified:
        if silenced:
            return []
        entry.notified, entry.last_sent = True, now
        return [_job(notifier, transition, "firing", f"{base}:firing", now)]
    if isinstance(config, AlertmanagerNotifier):
        return _due(entry, config.resend_interval, notifier, "repost", now)
    if silenced or config.repeat_interval <= 0 or entry.alert_state != "down":
        return []
    return _due(entry, config.repeat_interval, notifier, "reminder", now)


def _due(entry: FiringEntry, every: float, notifier: str, what: str, now: float) -> list[Job]:
    """The n-th re-post or reminder once n intervals have passed since the transition,
    and a whole interval since the last message (a firing sent late, when a window
    closed, is not followed by a reminder at the very next tick)."""
    transition = entry.transition
    slot = int((now - transition["at"]) // every)
    if slot <= entry.reminders or now - entry.last_sent < every:
        return []
    entry.reminders, entry.last_sent = slot, now
    event: Event = "reminder" if what == "reminder" else "firing"
    return [_job(notifier, transition, event, f"{transition['id']}:{notifier}:{what}:{slot}", now)]
