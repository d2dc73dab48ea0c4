"""Elasticsearch / OpenSearch sink: the bulk API (``POST /_bulk``, NDJSON).

Every record is indexed with ``_id`` = its deterministic record id (file identity +
byte offset), so a redelivered entry overwrites the same documents: redelivery is
idempotent and the index holds each line once.

The bulk API answers 200 even when items failed, so the per-item statuses decide:
an entry with any item answered 429 or 5xx is retried (the whole entry again: the
``_id`` makes the already-indexed items harmless); an entry with an item refused with
another 4xx (a mapping error, say) cannot succeed by retrying and goes to the
dead-letter stream with the error as its reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agents.sinks.base import Delivery, Outcome, json_records
from agents.sinks.http import make_client, post
from opsq.core.config.logs import SinkSettings
from opsq.core.errors import TemporaryError

BULK_PATH = "/_bulk"


class ElasticsearchSink:
    name = "elasticsearch"

    def __init__(self, settings: SinkSettings) -> None:
        headers = {}
        if settings.api_key is not None:
            headers["Authorization"] = f"ApiKey {settings.api_key.get_secret_value()}"
        self.index = settings.index
        self.client = make_client(settings, headers)

    def write(self, batch: Sequence[Delivery]) -> Outcome:
        body, owners = bulk_body(batch, self.index)
        response = post(self.client, BULK_PATH, body, "application/x-ndjson")
        try:
            answer = response.json()
        except ValueError as exc:
            raise TemporaryError(f"bulk answer is not JSON: {response.text[:200]}") from exc
        if not isinstance(answer, dict):
            # A proxy or a broken node answering 200 with something else: nothing is
            # known to be written, so the batch is retried (ids make that idempotent).
            raise TemporaryError(f"bulk answer is not a JSON object: {response.text[:200]}")
        if not answer.get("errors"):
            return Outcome()
        return judge_items(answer.get("items", []), owners, batch)

    def close(self) -> None:
        self.client.close()


def bulk_body(batch: Sequence[Delivery], index: str) -> tuple[bytes, list[int]]:
    """The NDJSON body and, for each bulk item, the batch position of its entry."""
    lines: list[str] = []
    owners: list[int] = []
    for position, delivery in enumerate(batch):
        for record_id, doc in json_records(delivery, ts_key="@timestamp", check_time=True):
            action = {"index": {"_index": index, "_id": record_id}}
            lines.append(json.dumps(action))
            lines.append(doc)
            owners.append(position)
    lines.append("")
    return "\n".join(lines).encode(), owners


def judge_items(items: list[Any], owners: list[int], batch: Sequence[Delivery]) -> Outcome:
    if len(items) != len(owners):
        raise TemporaryError(f"bulk answer has {len(items)} items for {len(owners)} documents")
    retry: set[int] = set()
    rejected: dict[int, str] = {}
    for item, position in zip(items, owners, strict=True):
        result: dict[str, Any] = next(iter(item.values()), {})
        status = int(result.get("status", 500))
        if status == 429 or status >= 500:
            retry.add(position)
        elif status >= 300 and position not in rejected:
            rejected[position] = f"elasticsearch {status}: {json.dumps(result.get('error'))[:300]}"
    return Outcome(
        rejected={batch[p].id: why for p, why in rejected.items() if p not in retry},
        retry=[batch[p] for p in sorted(retry)],
    )
