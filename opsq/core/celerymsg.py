"""Celery task messages for kombu's Redis transport, built without Celery.

Why build them here instead of calling ``app.send_task`` once per batch: ``send_task``
costs 3-7 ms a call on the 2-core dev VM (it builds the message, publishes it on its
own round trip, publishes a ``task-sent`` event and subscribes to the task's result
channel), so a 100,000-target run paid seconds before the first probe. With the
messages built here, :func:`opsq.core.runs.submit_run` creates the run and pushes every
batch in ONE Redis transaction (MULTI/EXEC): a run is enqueued whole or not at all, the
send costs one round trip, and the CLI does not import Celery at all.

The format is Celery's message protocol v2
(https://docs.celeryq.dev/en/stable/internals/protocol.html) inside kombu's Redis
transport envelope (``kombu/transport/redis.py``: a JSON object whose ``body`` is
base64, ``LPUSH``-ed onto the list named after the queue, consumed with ``BRPOP``).
``tests/pipeline/test_messages.py`` compares these messages with what Celery's own
``send_task`` writes to Redis, so a Celery or kombu upgrade that changes the format
fails that test loudly, and real workers consume them in every pipeline test.

Differences from ``send_task``, on purpose:

- ``ignore_result`` is set: nobody reads a batch's Celery result (the run store holds
  the results), and storing one per batch for a week grew Redis under beat.
- ``kwargsrepr`` is a short description instead of the repr of every target, which
  doubled each message (Flower shows it).
- No ``task-sent`` event: Flower shows a batch from the moment a worker receives it.
"""

from __future__ import annotations

import base64
import os
import socket
import uuid
from datetime import UTC, datetime

import orjson

_EMBED = b'{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'
"""Protocol v2's third body element: no callbacks, errbacks, chain or chord."""


def task_message(
    task: str,
    kwargs_json: bytes,
    *,
    queue: str,
    kwargsrepr: str,
    task_id: str | None = None,
    expires: float | None = None,
) -> bytes:
    """The envelope to ``LPUSH`` onto *queue* so a worker runs ``task(**kwargs)``.

    *kwargs_json* is the task's keyword arguments already encoded as a JSON object;
    *expires* (epoch seconds): a worker that receives it later drops it (revoked).
    """
    task_id = task_id or str(uuid.uuid4())
    body = b"[[]," + kwargs_json + b"," + _EMBED + b"]"
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": _headers(task, task_id, kwargsrepr, expires),
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return orjson.dumps(envelope)


def _headers(task: str, task_id: str, kwargsrepr: str, expires: float | None) -> dict[str, object]:
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None if expires is None else _iso(expires),
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": kwargsrepr,
        "origin": f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }


def _iso(epoch: float) -> str:
    """Celery's form of ``expires``: ISO 8601 with the UTC offset."""
    return datetime.fromtimestamp(epoch, UTC).isoformat()
