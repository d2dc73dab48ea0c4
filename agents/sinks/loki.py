"""Grafana Loki sink: the push API (``POST /loki/api/v1/push``, JSON body).

**Stream labels are a bounded set.** Records of a pod's container log (entries with
``meta``) are grouped by ``label_fields`` (default ``namespace``, ``pod``,
``container``, ``stream``; ``node``, ``host``, ``owner`` and ``label.<pod label>`` on
request) plus the static ``labels``. The settings refuse the pod uid, the path and
anything per line: each distinct label set is a Loki stream, and per-pod-instance or
per-line values would explode Loki's index. Other files keep ``host`` and ``path``.

**Timestamps.** A runtime-framed record (CRI, Docker) carries the time the runtime
wrote it; that is the Loki timestamp, so queries show when the line was written, not
when it was shipped. Loki drops an entry whose stream, timestamp and text equal
another's, so identical timestamps must be kept apart, and the same record must get
the same timestamp on every delivery (that same rule then makes redelivery
idempotent). The rule: the *k*-th record in a row of one file with exactly the same
runtime timestamp text gets that time plus *k* nanoseconds (*k* = 0 for the first).
*k* is counted within the entry from the entry's ``tsk`` (what the agent counted in
the entries before it), so it depends only on the file's content. Records without a
runtime time (plain files) get a time derived from the stream entry id (entry
milliseconds, plus the entry's sequence number and the record's index as
nanoseconds), which is equally stable across redeliveries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from agents.formats import FRAMED, UNKNOWN, runtime_ns, split_framed
from agents.sinks.base import Delivery, Outcome, path_text, text
from agents.sinks.http import make_client, post
from opsq.core.config.logs import SinkSettings
from opsq.core.logformat import Entry

PUSH_PATH = "/loki/api/v1/push"
_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")

Labels = tuple[tuple[str, str], ...]


class LokiSink:
    name = "loki"

    def __init__(self, settings: SinkSettings) -> None:
        headers = {"X-Scope-OrgID": settings.tenant} if settings.tenant else {}
        self.labels = dict(settings.labels)
        self.label_fields = list(settings.label_fields)
        url = settings.url or ""
        self.path = "" if url.rstrip("/").endswith(PUSH_PATH) else PUSH_PATH
        self.client = make_client(settings, headers)

    def write(self, batch: Sequence[Delivery]) -> Outcome:
        body = push_body(batch, self.labels, self.label_fields)
        post(self.client, self.path, body, "application/json")
        return Outcome()

    def close(self) -> None:
        self.client.close()


def record_ns(delivery: Delivery, index: int) -> int:
    """A deterministic nanosecond timestamp, unique within the entry's millisecond."""
    return delivery.ms * 1_000_000 + (delivery.seq * 4096 + index) % 1_000_000


def push_body(batch: Sequence[Delivery], labels: dict[str, str], fields: list[str]) -> bytes:
    streams: dict[Labels, list[list[str]]] = {}
    for delivery in batch:
        for key, ns, line in _values(delivery, labels, fields):
            streams.setdefault(key, []).append([str(ns), line])
    body: dict[str, Any] = {
        "streams": [{"stream": dict(key), "values": values} for key, values in streams.items()]
    }
    return json.dumps(body).encode()


def _values(
    delivery: Delivery, static: dict[str, str], fields: list[str]
) -> list[tuple[Labels, int, str]]:
    entry = delivery.entry
    if entry.meta is None:
        key = tuple({**static, "host": entry.host, "path": path_text(entry.path)}.items())
        return [
            (key, record_ns(delivery, i), text(raw)) for i, (_, raw) in enumerate(entry.records)
        ]
    base = {**static, **pod_labels(entry, fields)}
    out = []
    prev, k = b"", entry.tsk
    for index, (_, raw) in enumerate(entry.records):
        ts, stream, line = split_framed(raw) if entry.fmt == FRAMED else (UNKNOWN, UNKNOWN, raw)
        if index:
            k = k + 1 if ts == prev else 0
        prev = ts
        ns = runtime_ns(ts)
        labels = dict(base)
        if "stream" in fields and stream != UNKNOWN:
            labels["stream"] = text(stream)
        if not labels:
            labels["host"] = entry.host  # Loki refuses a stream without labels
        value = ns + k if ns is not None else record_ns(delivery, index)
        out.append((tuple(labels.items()), value, text(line)))
    return out


def pod_labels(entry: Entry, fields: list[str]) -> dict[str, str]:
    """The configured label fields that this entry's pod identity has values for."""
    meta = entry.meta or {}
    pod_labels_: dict[str, Any] = meta.get("labels") or {}
    owner = meta.get("owner") or {}
    out: dict[str, str] = {}
    for name in fields:
        if name in ("namespace", "pod", "container", "node") and meta.get(name):
            out[name] = str(meta[name])
        elif name == "host":
            out[name] = entry.host
        elif name == "owner" and owner:
            out[name] = f"{owner.get('kind', '')}/{owner.get('name', '')}"
        elif name.startswith("label.") and name[6:] in pod_labels_:
            out[_LABEL_NAME.sub("_", name[6:])] = str(pod_labels_[name[6:]])
    return out
