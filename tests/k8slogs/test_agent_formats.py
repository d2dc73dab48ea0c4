"""The agent end to end on runtime-written files: Docker json-file, CRI through the
/var/log/containers symlinks, long lines over max_line_bytes, invalid UTF-8."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import redis

from agents.agent import Agent
from agents.formats import split_framed
from agents.sinks.base import Delivery
from agents.sinks.loki import push_body, runtime_ns
from opsq.core.logformat import decode, record_id
from opsq.core.metrics import logs_agent as metrics
from tests.k8slogs.runtimes import MAX_LEN, Clock, CriWriter, DockerWriter
from tests.logs_agent.conftest import STREAM, agent_settings, raw_client, run_agent, wait_for

__all__ = ["raw_client", "run_agent"]  # fixtures used below

T0 = 1_795_000_000 * 10**9
UID = "0b6a8f2e-1111-4222-8333-444455556666"
CID = "c" * 64


def records(client: redis.Redis) -> list[tuple[str, str, tuple[bytes, bytes, bytes]]]:
    """(entry fmt, record id, (time, stream, message)) for every record in the stream."""
    out = []
    for _, fields in client.xrange(STREAM):
        entry = decode(fields)
        for off, raw in entry.records:
            out.append((entry.fmt, record_id(entry.fid, off), split_framed(raw)))
    return out


def test_docker_json_file_is_detected_and_split_lines_are_joined(
    tmp_path: Path, run_agent: Callable[..., Agent], raw_client: redis.Redis
) -> None:
    """format auto on a json-file: one record per logical line (a 40 KB line the copier
    cut in three is one), with its time and stream, framed for the shipper."""
    log = tmp_path / "docker" / CID / f"{CID}-json.log"
    writer = DockerWriter(log, Clock(T0))
    out_stamps = writer.write("stdout", b"first\n" + b"d" * 40_000 + b"\n")
    err_stamps = writer.write("stderr", b"an <error> & more\n")
    writer.close()
    run_agent(agent_settings(tmp_path, paths=[str(log)], format="auto"))
    wait_for(lambda: len(records(raw_client)) == 3, what="three records")
    got = [(fmt, rec) for fmt, _, rec in records(raw_client)]
    assert got == [
        ("cri", (out_stamps[0], b"stdout", b"first")),
        ("cri", (out_stamps[1], b"stdout", b"d" * 40_000)),
        ("cri", (err_stamps[0], b"stderr", b"an <error> & more")),
    ]


def test_containers_symlinks_and_pods_paths_are_read_once(
    tmp_path: Path, run_agent: Callable[..., Agent], raw_client: redis.Redis
) -> None:
    """Globs over /var/log/containers (links followed into /var/log/pods) and over
    /var/log/pods itself: the file is read once (one identity, no duplicate records)."""
    pods, containers = tmp_path / "pods", tmp_path / "containers"
    log = pods / f"shop_web_{UID}" / "app" / "0.log"
    writer = CriWriter(log, Clock(T0))
    writer.write("stdout", b"".join(b"line %d\n" % i for i in range(100)))
    writer.close()
    containers.mkdir()
    os.symlink(os.path.relpath(log, containers), containers / f"web_shop_app-{CID}.log")
    settings = agent_settings(
        tmp_path,
        paths=[str(containers / "*.log"), str(pods / "*/*/*.log")],
        format="cri",
        follow_symlinks=True,
        symlink_roots=[str(pods)],
        kubernetes={"pods_dir": str(pods), "containers_dir": str(containers)},
    )
    run_agent(settings)
    wait_for(lambda: len(records(raw_client)) >= 100, what="the file's records")
    got = records(raw_client)
    assert len(got) == 100
    assert len({rid for _, rid, _ in got}) == 100
    entries = [decode(f) for _, f in raw_client.xrange(STREAM)]
    assert {e.path for e in entries} == {str(log)}, (
        "the file's own name wins over its link (rotated names share its base name)"
    )
    for entry in entries:
        assert entry.meta is not None
        assert (entry.meta["pod"], entry.meta["pod_uid"], entry.meta["restart"]) == ("web", UID, 0)


def test_long_lines_over_max_line_bytes_and_invalid_utf8_inside_cri(
    tmp_path: Path, run_agent: Callable[..., Agent], raw_client: redis.Redis
) -> None:
    """A 40 KB line (P, P, F) is joined, then cut to max_line_bytes once (counted); a line
    with invalid UTF-8 ships its bytes unchanged (counted)."""
    log = tmp_path / "pods" / f"shop_web_{UID}" / "app" / "0.log"
    writer = CriWriter(log, Clock(T0))
    writer.write("stdout", b"x" * (2 * MAX_LEN + 100) + b"\n" + b"bad \xff\xfe bytes\nok\n")
    writer.close()
    cut = metrics.LINES_TRUNCATED._value.get()
    invalid = metrics.INVALID_ENCODING._value.get()
    run_agent(agent_settings(tmp_path, paths=[str(log)], format="cri", max_line_bytes=20_000))
    wait_for(lambda: len(records(raw_client)) == 3, what="three records")
    messages = [rec[2] for _, _, rec in records(raw_client)]
    assert messages == [b"x" * 20_000, b"bad \xff\xfe bytes", b"ok"]
    assert metrics.LINES_TRUNCATED._value.get() == cut + 1
    assert metrics.INVALID_ENCODING._value.get() == invalid + 1


def test_identical_runtime_times_get_distinct_loki_times_that_survive_a_restart(
    tmp_path: Path, redis_url: str, raw_client: redis.Redis
) -> None:
    """Ten lines written in the same nanosecond, three per entry, read by two agents
    (the second resumes mid-run): entries carry tsk 0, 3, ..., the restart re-learns the
    count, and the Loki times are time+0 .. time+9, distinct and the same on redelivery."""
    log = tmp_path / "pods" / f"shop_web_{UID}" / "app" / "0.log"
    writer = CriWriter(log, Clock(T0, step_ns=0))
    writer.write("stdout", b"same\n" * 5)
    settings = agent_settings(tmp_path, paths=[str(log)], format="cri", batch_lines=3,
                              kubernetes={"pods_dir": str(tmp_path / "pods")})  # fmt: skip
    first = Agent(settings, redis_url, host="h").start()
    wait_for(lambda: len(records(raw_client)) == 5, what="the first five")
    first.stop()
    first.join(30)
    writer.write("stdout", b"same\n" * 5)
    writer.close()
    second = Agent(settings, redis_url, host="h").start()
    try:
        wait_for(lambda: len(records(raw_client)) == 10, what="all ten")
    finally:
        second.stop()
        second.join(30)
    entries = [decode(f) for _, f in raw_client.xrange(STREAM)]
    assert [e.tsk for e in entries] == [0, 3, 5, 8]
    deliveries = [Delivery(i.decode(), decode(f), f) for i, f in raw_client.xrange(STREAM)]
    body = json.loads(push_body(deliveries, {}, ["pod"]))
    times = [int(ts) for s in body["streams"] for ts, _ in s["values"]]
    base = runtime_ns(split_framed(entries[0].records[0][1])[0])
    assert base is not None
    assert times == [base + k for k in range(10)]
    assert push_body(deliveries, {}, ["pod"]) == push_body(deliveries, {}, ["pod"])
