"""Records of pod logs in the sinks: fields as JSON, Loki labels and times, ES documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agents.sinks.base import Delivery, entry_jsonl, json_records
from agents.sinks.elasticsearch import bulk_body
from agents.sinks.loki import LokiSink, push_body, runtime_ns
from opsq.core.config.logs import SinkSettings
from opsq.core.logformat import Entry, decode
from tests.logs_shipper.fake_http import FakeLoki, ServerThread

META = {
    "namespace": "shop", "pod": "web-1", "container": "app", "pod_uid": "u-1", "restart": 2,
    "node": "node-a", "labels": {"app": "web", "app.kubernetes.io/name": "web"},
    "owner": {"kind": "Deployment", "name": "web"},
}  # fmt: skip
T = b"2026-11-18T11:06:40.000000007Z"


def delivery(records: list[tuple[int, bytes]], *, meta: Any = META, tsk: int = 0) -> Delivery:
    entry = Entry("host-a", "/var/log/pods/shop_web-1_u-1/app/2.log", "1:2:ab", records[0][0],
                  records[-1][0] + 100, tuple(records), fmt="cri", meta=meta, tsk=tsk)  # fmt: skip
    fields = entry.encode()
    assert decode(fields) == entry, "the optional fields survive the stream"
    return Delivery("1795000000000-3", entry, fields)


def docs(d: Delivery) -> list[dict[str, Any]]:
    return [json.loads(line) for line in entry_jsonl(d).splitlines()]


@pytest.mark.parametrize("line", [b"plain text", b'needs "escaping" \xff'])
def test_file_and_stdout_records_carry_pod_fields_runtime_time_and_stream(line: bytes) -> None:
    """The JSON line: id/path/offset as before, message without framing, ts and stream
    from the runtime, and the pod fields; the fast and careful renderers agree."""
    d = delivery([(0, T + b" stderr F " + line), (80, T + b" stdout F second")])
    first, second = docs(d)
    assert first["line"] == line.decode("utf-8", "backslashreplace")
    assert (first["ts"], first["stream"], second["stream"]) == (T.decode(), "stderr", "stdout")
    assert first["id"] == "1:2:ab:0"
    assert second["offset"] == 80
    for key in ("namespace", "pod", "container", "pod_uid", "restart", "node", "labels", "owner"):
        assert first[key] == META[key]
    assert entry_jsonl(d) == "".join(doc + "\n" for _, doc in json_records(d)).encode()


def test_a_line_that_did_not_parse_gets_the_entry_time_and_no_stream() -> None:
    """Framed as '- - F ...' by the agent: the entry time stands in, no stream field."""
    [doc] = docs(delivery([(0, b"- - F garbage")]))
    assert doc["line"] == "garbage"
    assert doc["ts"].startswith("2026-")
    assert "stream" not in doc


def test_elasticsearch_documents_keep_deterministic_ids_and_the_runtime_timestamp() -> None:
    """_id = <fid>:<offset> (a redelivery overwrites), @timestamp = the runtime's time."""
    d = delivery([(0, T + b" stdout F hello"), (50, T + b" stdout F world")])
    body, owners = bulk_body([d, d], "logs")
    lines = body.decode().splitlines()
    ids = [json.loads(a)["index"]["_id"] for a in lines[::2]]
    assert ids == ["1:2:ab:0", "1:2:ab:50"] * 2
    assert owners == [0, 0, 1, 1]
    doc = json.loads(lines[1])
    assert doc["@timestamp"] == T.decode()
    assert doc["pod"] == "web-1"
    assert doc["line"] == "hello"


def test_runtime_times_parse_to_nanoseconds_in_any_zone() -> None:
    """RFC3339Nano with trimmed zeros, Z or an offset (containerd writes local time)."""
    base = 1_795_000_000 * 10**9
    assert runtime_ns(b"2026-11-18T11:06:40Z") == base
    assert runtime_ns(b"2026-11-18T11:06:40.5Z") == base + 500_000_000
    assert runtime_ns(b"2026-11-18T12:06:40.000000007+01:00") == base + 7
    assert runtime_ns(b"-") is None
    assert runtime_ns(b"2026-11-18 11:06:40") is None


BAD_TIMES = [b"2026-02-30T10:00:00Z", b"0000-01-01T00:00:00Z", b"2026-11-18T11:06:61Z"]


@pytest.mark.parametrize("stamp", BAD_TIMES)
def test_an_impossible_runtime_time_falls_back_to_the_entry_time_in_loki(stamp: bytes) -> None:
    """A record whose time has the right shape but no such instant (February 30th, year
    0) is pushed with the stable entry-derived time instead of crashing the shipper."""
    d = delivery([(0, T + b" stdout F good"), (40, stamp + b" stdout F bad day")])
    assert runtime_ns(stamp) is None
    values = json.loads(push_body([d], {}, ["namespace", "stream"]))["streams"][0]["values"]
    assert [line for _, line in values] == ["good", "bad day"]
    assert int(values[1][0]) // 10**6 == d.ms


@pytest.mark.parametrize("stamp", BAD_TIMES)
def test_an_impossible_runtime_time_is_not_sent_as_the_elasticsearch_timestamp(
    stamp: bytes,
) -> None:
    """Elasticsearch would refuse the document (and with it the whole entry): the entry
    time stands in for @timestamp; the runtime's text stays in the record's line."""
    d = delivery([(0, stamp + b" stdout F bad day")])
    body, _ = bulk_body([d], "logs")
    doc = json.loads(body.decode().splitlines()[1])
    assert doc["@timestamp"] == "2026-11-18T11:06:40.000Z"
    assert doc["line"] == "bad day"
    assert doc["stream"] == "stdout"


def test_loki_labels_are_the_bounded_set_and_identical_times_stay_distinct() -> None:
    """Default labels namespace/pod/container/stream (never uid or path); the k-th
    repeat of one runtime time gets +k ns, counting on from the entry's tsk."""
    records = [(0, T + b" stdout F same"), (30, T + b" stdout F same"), (60, T + b" stderr F x")]
    fields = ["namespace", "pod", "container", "stream", "label.app"]
    body = json.loads(push_body([delivery(records, tsk=2)], {"env": "prod"}, fields))
    streams = {tuple(sorted(s["stream"].items())): s["values"] for s in body["streams"]}
    base = runtime_ns(T)
    assert base is not None
    stdout = (("app", "web"), ("container", "app"), ("env", "prod"), ("namespace", "shop"),
              ("pod", "web-1"), ("stream", "stdout"))  # fmt: skip
    assert streams[stdout] == [[str(base + 2), "same"], [str(base + 3), "same"]]
    stderr = tuple(("stream", "stderr") if k == "stream" else (k, v) for k, v in stdout)
    assert streams[stderr] == [[str(base + 4), "x"]]
    assert not any("pod_uid" in dict(k) or "path" in dict(k) for k in streams)


def test_the_same_entry_pushed_twice_carries_identical_values() -> None:
    """Redelivery is idempotent in Loki: the same (labels, time, line) every time."""
    d = delivery([(0, T + b" stdout F a"), (9, b"- - F unparsed")])
    assert push_body([d], {}, ["pod"]) == push_body([d], {}, ["pod"])


def test_loki_sink_pushes_pod_streams_and_keeps_plain_files_on_host_and_path() -> None:
    """Over HTTP: a pod entry by the label fields, an entry without meta by host+path."""
    fake = FakeLoki()
    server = ServerThread(fake.app()).start()
    settings = SinkSettings(type="loki", url=server.url, label_fields=["namespace", "owner"])
    sink = LokiSink(settings)
    plain = Entry("host-a", "/var/log/app.log", "3:4:cd", 0, 10, ((0, b"plain"),))
    try:
        sink.write([delivery([(0, T + b" stdout F pod line")]),
                    Delivery("1795000000000-4", plain, plain.encode())])  # fmt: skip
    finally:
        sink.close()
        server.stop()
    labels = [stream for stream, _, _ in fake.values()]
    assert labels == [
        {"namespace": "shop", "owner": "Deployment/web"},
        {"host": "host-a", "path": "/var/log/app.log"},
    ]
