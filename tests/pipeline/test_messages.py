"""Batch messages built without Celery are the messages Celery itself would send.

:mod:`opsq.core.celerymsg` writes Celery's protocol v2 inside kombu's Redis envelope by
hand (one transaction per run instead of one ``send_task`` per batch). This is the
tripwire: if a Celery or kombu upgrade changes what ``send_task`` writes, the field
sets below differ and this test fails, before a worker silently rejects a batch.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

from opsq.core import keys, signatures
from opsq.core.runs import batch_message
from opsq.core.settings import load_settings
from opsq.core.targets import EncodedBatch
from producers.probes import close_producer_app, producer_app

KWARGS = {
    "run_id": "r1",
    "batch_id": "b0",
    "offset": 0,
    "targets": [{"name": "a", "url": "http://x/"}],
}


def _celery_message(redis_url: str, redis_client: redis.Redis) -> dict[str, Any]:
    app = producer_app(load_settings(None, redis_url=redis_url))
    try:
        app.send_task(signatures.PROBE_BATCH, kwargs=KWARGS)
    finally:
        close_producer_app(app)
    raw = redis_client.rpop(keys.QUEUE_PROBES)
    assert raw is not None
    return json.loads(raw)


def _body(message: dict[str, Any]) -> list[Any]:
    return json.loads(base64.b64decode(message["body"]))


def test_batch_message_has_the_shape_celery_send_task_writes(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Same envelope, header and property names, same routing, same body layout."""
    theirs = _celery_message(redis_url, redis_client)
    targets = json.dumps(KWARGS["targets"]).encode()
    queue, message = batch_message("r1", 0, EncodedBatch(0, 1, targets))
    assert queue == keys.QUEUE_PROBES
    ours = json.loads(message)
    assert set(ours) == set(theirs)
    assert set(ours["headers"]) == set(theirs["headers"])
    assert set(ours["properties"]) == set(theirs["properties"])
    for name in ("content-type", "content-encoding"):
        assert ours[name] == theirs[name]
    for name in ("delivery_mode", "delivery_info", "priority", "body_encoding"):
        assert ours["properties"][name] == theirs["properties"][name], name
    for name in ("lang", "task", "retries", "timelimit", "eta", "expires", "argsrepr"):
        assert ours["headers"][name] == theirs["headers"][name], name
    assert (
        ours["headers"]["root_id"] == ours["headers"]["id"] == ours["properties"]["correlation_id"]
    )
    assert _body(ours) == _body(theirs)
    assert ours["headers"]["ignore_result"] is True


def test_a_location_batch_goes_to_its_queue_and_expires_at_the_deadline() -> None:
    """probes.<location>, the location among the kwargs, Celery's ISO ``expires``."""
    queue, message = batch_message("r1", 3, EncodedBatch(300, 1, b"[]"), location="eu",
                                   expires=1_800_000_000.0)  # fmt: skip
    decoded = json.loads(message)
    assert queue == keys.location_queue("eu") == "probes.eu"
    assert decoded["properties"]["delivery_info"]["routing_key"] == "probes.eu"
    assert decoded["headers"]["expires"] == "2027-01-15T08:00:00+00:00"
    assert _body(decoded)[1] == {"run_id": "r1", "batch_id": "b3", "offset": 300,
                                 "targets": [], "location": "eu"}  # fmt: skip
