"""The stream entry format between the log agent and the shipper (version 1).

One stream entry carries many records from one file (one XADD per line cannot keep
up; see the README's log benchmark). Fields, all bytes:

- ``v``: format version (``1``)
- ``host``, ``path``: where the records came from
- ``fid``: file identity ``<dev>:<inode>:<fingerprint hex>``
- ``start``, ``end``: byte offsets in the file covered by this entry
- ``data``: the records' bytes concatenated (a record may hold ``\\n`` when multiline
  joining is on, and may hold any bytes: invalid UTF-8 is kept as is)
- ``lens``: comma-separated byte length of each record within ``data``
- ``offs``: comma-separated absolute file offset where each record starts

Optional fields (an entry without them is what older agents wrote; a shipper that
does not know them ships the records as they are):

- ``fmt``: ``cri`` when every record is framed ``<time> <stream> F <message>`` (the
  container runtime's time and stream travel inside the record; see
  :mod:`agents.formats`)
- ``meta``: a JSON object with the pod identity and metadata of the file
  (``namespace``, ``pod``, ``container``, ``pod_uid``, ``restart``, ``node``,
  ``labels``, ``annotations``, ``owner``)
- ``tsk``: how many records right before the first one (same file) carry the same
  runtime time (Loki's rule for identical timestamps; see the README)

A record's id is ``<fid>:<offset>``: deterministic, so a redelivered entry yields the
same ids (idempotent ``_id`` in Elasticsearch, dedupable anywhere else).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

VERSION = b"1"


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Entry:
    host: str
    path: str
    fid: str
    start: int
    end: int
    records: tuple[tuple[int, bytes], ...]
    """(absolute offset, record bytes) pairs."""
    fmt: str = ""
    meta: dict[str, Any] | None = None
    tsk: int = 0

    def encode(self) -> dict[bytes, bytes]:
        fields = {
            b"v": VERSION,
            b"host": self.host.encode(),
            b"path": self.path.encode("utf-8", "surrogateescape"),
            b"fid": self.fid.encode(),
            b"start": str(self.start).encode(),
            b"end": str(self.end).encode(),
            b"data": b"".join(r for _, r in self.records),
            b"lens": ",".join(str(len(r)) for _, r in self.records).encode(),
            b"offs": ",".join(str(o) for o, _ in self.records).encode(),
        }
        if self.fmt:
            fields[b"fmt"] = self.fmt.encode()
        if self.meta is not None:
            fields[b"meta"] = json.dumps(self.meta, separators=(",", ":")).encode()
        if self.tsk:
            fields[b"tsk"] = str(self.tsk).encode()
        return fields


def record_id(fid: str, offset: int) -> str:
    return f"{fid}:{offset}"


def decode(fields: dict[bytes, bytes]) -> Entry:
    """Parse a stream entry; raise ValueError on anything malformed (a poison entry)."""
    if fields.get(b"v") != VERSION:
        raise ValueError(f"unknown entry version {fields.get(b'v')!r}")
    data = fields[b"data"]
    # map/accumulate/slice keep the per-record work in C: entries hold thousands of lines.
    lens = list(map(int, fields[b"lens"].split(b","))) if fields[b"lens"] else []
    offs = list(map(int, fields[b"offs"].split(b","))) if fields[b"offs"] else []
    if len(lens) != len(offs) or sum(lens) != len(data) or (lens and min(lens) < 0):
        raise ValueError("entry lens/offs do not match its data")
    ends = list(accumulate(lens))
    starts = [0, *ends[:-1]]
    records = tuple(zip(offs, map(data.__getitem__, map(slice, starts, ends)), strict=True))
    return Entry(
        host=fields[b"host"].decode(),
        path=fields[b"path"].decode("utf-8", "surrogateescape"),
        fid=fields[b"fid"].decode(),
        start=int(fields[b"start"]),
        end=int(fields[b"end"]),
        records=records,
        fmt=fields.get(b"fmt", b"").decode(),
        meta=_meta(fields.get(b"meta")),
        tsk=int(fields.get(b"tsk", b"0")),
    )


def _meta(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise ValueError("entry meta is not a JSON object")
    return meta
