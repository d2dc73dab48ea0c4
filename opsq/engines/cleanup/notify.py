"""Heads-up before deletion (``notify_before``): a Kubernetes Event, and the alert
notifiers a rule names (``notify: [slack-ops]``).

The Event is where ``kubectl describe`` and every event exporter already look, and it
needs no other service. Its name is derived from the object's UID and due time, so a
second announcement of the same deletion (a resync, a restarted watcher, the next
one-shot run) is a 409 AlreadyExists on the same name: each deletion is announced once
without any state of our own. A changed due time is a new deletion, announced again.

The Event is also the "announced once" marker for the notifiers: they are sent the
heads-up only when the Event was new (or could not be written at all, for example
without RBAC for events: then a duplicate is better than silence). Sending goes through
*relay*, which the caller chooses: in process (:func:`opsq.engines.alerts.send_via`,
``--local``) or the ``opsq.notify`` task, keyed by object and due time, which retries
with backoff and delivers a key at most once after a success.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from opsq.core.config.cleanup import CleanupSettings
from opsq.core.errors import OpsqError
from opsq.engines.alerts import Message, notice
from opsq.engines.cleanup import planner
from opsq.engines.cleanup.executor import EVENTS_NAMESPACE, Target, make_event
from opsq.engines.cleanup.kube import Conflict, Kube

log = logging.getLogger(__name__)
REASON = "OpsqCleanupScheduled"
Relay = Callable[[str, Message], object]
"""(notifier name, message) -> sent (or queued)."""


def _digest(target: Target, due_at: float) -> str:
    return hashlib.sha256(f"{target.uid}/{int(due_at)}".encode()).hexdigest()[:12]


def event_name(target: Target, due_at: float) -> str:
    return f"{target.name[:200]}.opsq-notice-{_digest(target, due_at)}"


def message(target: Target, due_at: float, now: float) -> str:
    where = f"{target.namespace}/{target.name}" if target.namespace else target.name
    minutes = max(0, int((due_at - now) // 60))
    return (
        f"{target.kind or target.resource} {where} will be deleted by opsq cleanup rule "
        f"{target.rule!r} at {planner.format_time(due_at)} (in {minutes} min); change the "
        "object or the rule to keep it"
    )


class EventNotifier:
    def __init__(
        self,
        kube: Kube,
        *,
        clock: Callable[[], float],
        settings: CleanupSettings | None = None,
        relay: Relay | None = None,
    ) -> None:
        self.kube = kube
        self.clock = clock
        self.settings = settings
        self.relay = relay

    def announce(self, target: Target, due_at: float) -> bool:
        """Announce once: the Event, then the rule's notifiers. False if done before."""
        now = self.clock()
        text = message(target, due_at, now)
        event: dict[str, Any] = make_event(
            target, REASON, text, now, name=event_name(target, due_at)
        )
        try:
            self.kube.create_event(target.namespace or EVENTS_NAMESPACE, event)
        except Conflict:
            return False  # 409 AlreadyExists: announced before
        except OpsqError as exc:  # a courtesy: never block the cleanup for it
            log.warning("could not create the heads-up Event for %s: %s", target.name, exc)
        self._relay(target, due_at, text, now)
        return True

    def _relay(self, target: Target, due_at: float, text: str, now: float) -> None:
        if self.settings is None or self.relay is None:
            return
        try:
            names = self.settings.rule(target.rule).notify
        except KeyError:
            return
        labels = {"rule": target.rule, "resource": target.resource, "name": target.name,
                  "namespace": target.namespace, "uid": target.uid}  # fmt: skip
        for name in names:
            msg = notice(
                f"cleanup:{_digest(target, due_at)}:{name}", f"opsq cleanup: {target.name} "
                f"will be deleted", text, labels=labels, severity="warning", now=now,
            )  # fmt: skip
            try:
                self.relay(name, msg)
            except OpsqError as exc:
                log.warning("heads-up for %s via notifier %s failed: %s", target.name, name, exc)
