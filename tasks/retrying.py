"""Retry a task, or hand its message back when the retry cannot be published.

``Task.retry`` publishes a copy of the task and lets the original be acknowledged.
When Redis refuses the publish (down, restarting, OOM), Celery raises
``Reject(requeue=False)`` instead: the worker's main process then deletes the message
from kombu's ``unacked`` hash as soon as Redis answers again, so an ``acks_late`` task
whose work could not be stored because Redis was away was lost for good (hostile check
89 F5: a 4 s Redis restart under two live workers left 191 of 3,000 targets of a run
without a result, and the run never completed).

:func:`retry_or_requeue` turns that into ``Reject(requeue=True)``: kombu puts the
message back at the head of its queue in one MULTI once Redis takes writes, and while
it does not, the message stays un-acknowledged and returns after the visibility
timeout. (Under OOM that MULTI is refused and the worker's main process exits with
kombu's error; a supervisor restarts it, and the message, still un-acknowledged, comes
back after the visibility timeout: late, not lost.) Only for ``acks_late`` tasks: the
message must still be unacknowledged.
"""

from __future__ import annotations

import logging

from celery import Task
from celery.exceptions import Reject

log = logging.getLogger(__name__)


def retry_or_requeue(task: Task, exc: Exception, countdown: float) -> Exception:
    """The exception to raise: Celery's ``Retry``, or a requeueing ``Reject`` when the
    retry could not be published. Raises as ``Task.retry`` does once retries run out."""
    try:
        retry: Exception = task.retry(exc=exc, countdown=countdown, throw=False)
    except Reject as refused:
        log.warning(
            "%s[%s]: retry not published (%s); message handed back to the queue",
            task.name, task.request.id, refused.reason,
        )  # fmt: skip
        requeue: Exception = Reject(f"retry not published: {refused.reason}", requeue=True)
        return requeue
    return retry
