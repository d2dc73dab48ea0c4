"""Grafana Loki sink: the push API (``POST /loki/api/v1/push``, JSON body).

Records are grouped into Loki streams by labels ``host`` and ``path`` plus the
configured ``labels``; the record id is not a label (one value per line would explode
Loki's index). Instead redelivery is made idempotent through timestamps: each record's
timestamp is derived from its stream entry id (entry milliseconds, plus the entry's
sequence number and the record's index as nanoseconds), so a redelivered entry
carries the same (timestamp, line) pairs and Loki's ingester drops exact duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agents.sinks.base import Delivery, Outcome, path_text, text
from agents.sinks.http import make_client, post
from opsq.core.config.logs import SinkSettings

PUSH_PATH = "/loki/api/v1/push"


class LokiSink:
    name = "loki"

    def __init__(self, settings: SinkSettings) -> None:
        headers = {"X-Scope-OrgID": settings.tenant} if settings.tenant else {}
        self.labels = dict(settings.labels)
        url = settings.url or ""
        self.path = "" if url.rstrip("/").endswith(PUSH_PATH) else PUSH_PATH
        self.client = make_client(settings, headers)

    def write(self, batch: Sequence[Delivery]) -> Outcome:
        post(self.client, self.path, push_body(batch, self.labels), "application/json")
        return Outcome()

    def close(self) -> None:
        self.client.close()


def record_ns(delivery: Delivery, index: int) -> int:
    """A deterministic nanosecond timestamp, unique within the entry's millisecond."""
    return delivery.ms * 1_000_000 + (delivery.seq * 4096 + index) % 1_000_000


def push_body(batch: Sequence[Delivery], labels: dict[str, str]) -> bytes:
    streams: dict[tuple[str, str], list[list[str]]] = {}
    for delivery in batch:
        entry = delivery.entry
        values = streams.setdefault((entry.host, path_text(entry.path)), [])
        for index, (_, raw) in enumerate(entry.records):
            values.append([str(record_ns(delivery, index)), text(raw)])
    body: dict[str, Any] = {
        "streams": [
            {"stream": {**labels, "host": host, "path": path}, "values": values}
            for (host, path), values in streams.items()
        ]
    }
    return json.dumps(body).encode()
