"""Heads-up before deletion (``notify_before``): a Kubernetes Event on the object.

The Event is where ``kubectl describe`` and every event exporter already look, and it
needs no other service. Its name is derived from the object's UID and due time, so a
second announcement of the same deletion (a resync, a restarted watcher, the next
one-shot run) is a 409 AlreadyExists on the same name: each deletion is announced once
without any state of our own. A changed due time is a new deletion, announced again.

Alert notifiers (webhook, Slack) are not available to engines yet; when they are,
:class:`EventNotifier` is the one place to route through them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from opsq.core.errors import OpsqError
from opsq.engines.cleanup import planner
from opsq.engines.cleanup.executor import EVENTS_NAMESPACE, Target, make_event
from opsq.engines.cleanup.kube import Conflict, Kube

log = logging.getLogger(__name__)
REASON = "OpsqCleanupScheduled"


def event_name(target: Target, due_at: float) -> str:
    digest = hashlib.sha256(f"{target.uid}/{int(due_at)}".encode()).hexdigest()[:12]
    return f"{target.name[:200]}.opsq-notice-{digest}"


def message(target: Target, due_at: float, now: float) -> str:
    where = f"{target.namespace}/{target.name}" if target.namespace else target.name
    minutes = max(0, int((due_at - now) // 60))
    return (
        f"{target.kind or target.resource} {where} will be deleted by opsq cleanup rule "
        f"{target.rule!r} at {planner.format_time(due_at)} (in {minutes} min); remove the "
        "rule's match (or annotate it differently) to keep it"
    )


class EventNotifier:
    def __init__(self, kube: Kube, *, clock: Callable[[], float]) -> None:
        self.kube = kube
        self.clock = clock

    def announce(self, target: Target, due_at: float) -> bool:
        """Create the heads-up Event; False when it already existed or could not be made."""
        now = self.clock()
        event: dict[str, Any] = make_event(
            target, REASON, message(target, due_at, now), now, name=event_name(target, due_at)
        )
        try:
            self.kube.create_event(target.namespace or EVENTS_NAMESPACE, event)
        except Conflict:
            return False  # 409 AlreadyExists: announced before
        except OpsqError as exc:  # a courtesy: never block the cleanup for it
            log.warning("could not announce the deletion of %s: %s", target.name, exc)
            return False
        return True
