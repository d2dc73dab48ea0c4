"""Delivery counting, dead letters and shutdown of `opsq ship` processes.

Restarts during a sink outage must not dead-letter anything; what does reach the
dead-letter stream can be moved back (`opsq ship replay --from-dead`) and is trimmed
by age; SIGTERM ends the process within shutdown_grace whatever the sink or Redis do.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agents.sinks.base import Delivery
from agents.sinks.file import FileSink
from opsq.core import keys
from opsq.core.errors import TemporaryError
from opsq.core.redis_server import RedisServer
from tests.logs_shipper.support import (
    GROUP,
    STREAM,
    ShipperProc,
    ids_of,
    make_entry,
    produce,
    sink_ids,
    wait_for,
)

pytestmark = pytest.mark.slow
OPSQ = str(Path(sys.executable).with_name("opsq"))
GRACE = 2


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem with no space left: a 256 KiB tmpfs filled to the last byte."""
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        message = f"cannot mount a tmpfs (needs root with CAP_SYS_ADMIN): {res.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # ENOSPC: full
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_batch_the_disk_fills_up_under_leaves_nothing_behind(full_disk: Path) -> None:
    """Hostile check F4: ENOSPC in the middle of a batch left its first part in the file;
    the retry appended the whole batch after a torn line (duplicates, junk)."""
    os.unlink(full_disk / "filler")
    free = os.statvfs(full_disk).f_bavail * os.statvfs(full_disk).f_frsize
    (full_disk / "filler").write_bytes(b"\0" * (free - 8192))  # 8 KiB left
    sink = FileSink(full_disk / "shipped.jsonl", max_bytes=1 << 30, backups=1)
    entries = [make_entry(n, lines=100) for n in range(5)]  # ~75 KB of JSON lines
    batch = [Delivery(f"{n + 1}-0", e, e.encode()) for n, e in enumerate(entries)]
    with pytest.raises(TemporaryError):
        sink.write(batch)
    assert (full_disk / "shipped.jsonl").stat().st_size == 0
    os.unlink(full_disk / "filler")
    sink.write(batch)
    lines = (full_disk / "shipped.jsonl").read_bytes().splitlines()
    ids = [json.loads(line)["id"] for line in lines]  # every line whole, each record once
    assert sorted(ids) == sorted(ids_of(entries))


def start(procs: list[ShipperProc], redis_url: str, tmp_path: Path, name: str, **conf: object):
    proc = ShipperProc(redis_url, tmp_path, name, **conf).start()
    procs.append(proc)
    return proc


@pytest.fixture
def procs() -> Iterator[list[ShipperProc]]:
    started: list[ShipperProc] = []
    yield started
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill9()


def test_seven_restarts_during_a_full_disk_dead_letter_nothing_then_all_arrive(
    redis_url: str, tmp_path: Path, full_disk: Path, procs: list[ShipperProc]
) -> None:
    client = redis.Redis.from_url(redis_url)
    entries = [make_entry(n, lines=20) for n in range(10)]
    produce(client, entries)
    sink = {"type": "file", "path": str(full_disk / "shipped.jsonl")}
    for restart in range(7):
        proc = start(procs, redis_url, tmp_path, "s1", sink=sink, shutdown_grace=GRACE)
        wait_for(
            lambda p=proc: p.metric("opsq_shipper_sink_errors_total") >= 1,
            what=f"the sink failing (run {restart})",
        )
        assert proc.stop() == 0
    counts = [r["times_delivered"] for r in client.xpending_range(STREAM, GROUP, "-", "+", 100)]
    assert min(counts) >= 7  # the old rule (XPENDING counter > 5) dead-lettered these
    assert client.xlen(keys.dead_letter(STREAM)) == 0
    os.unlink(full_disk / "filler")  # space again
    proc = start(procs, redis_url, tmp_path, "s1", sink=sink, shutdown_grace=GRACE)
    wait_for(
        lambda: set(sink_ids(full_disk, "shipped.jsonl*")) == ids_of(entries),
        what="every record after recovery",
    )
    assert proc.stop() == 0
    assert client.xlen(keys.dead_letter(STREAM)) == 0
    assert client.xpending(STREAM, GROUP)["pending"] == 0


def test_replay_from_dead_moves_a_real_dead_letter_back(
    redis_url: str, tmp_path: Path, procs: list[ShipperProc]
) -> None:
    """A shipper dead-letters an entry that does not decode; replay puts it back, with
    its original fields; the listing without --from-dead moves nothing."""
    client = redis.Redis.from_url(redis_url)
    good = make_entry(0)
    produce(client, [good])
    poison = {b"v": b"1", b"data": b"\xff"}  # no fid, no offsets: it cannot decode
    poison_id = client.xadd(STREAM, poison).decode()
    proc = start(procs, redis_url, tmp_path, "s1")
    wait_for(lambda: client.xlen(keys.dead_letter(STREAM)) == 1, what="the dead letter")
    assert proc.stop() == 0
    [(dead_id, dead_fields)] = client.xrange(keys.dead_letter(STREAM))
    assert dead_fields[b"original_id"].decode() == poison_id
    cfg = proc.config
    listing = run_cli(["ship", "replay", "--config", str(cfg), "--redis-url", redis_url])
    assert "nothing moved" in listing
    assert poison_id in listing
    assert client.xlen(keys.dead_letter(STREAM)) == 1
    out = run_cli(
        [
            "ship",
            "replay",
            "--from-dead",
            "--count",
            "5",
            "--config",
            str(cfg),
            "--redis-url",
            redis_url,
        ]
    )
    assert "moved 1 dead letters back" in out
    assert dead_id.decode() in out
    assert client.xlen(keys.dead_letter(STREAM)) == 0
    replayed = client.xrange(STREAM)[-1][1]
    assert replayed == poison  # the original fields, without reason/original_id/group


def run_cli(args: list[str]) -> str:
    res = subprocess.run([OPSQ, *args], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_dead_letters_older_than_dead_retention_are_trimmed_and_counted(
    redis_url: str, tmp_path: Path, procs: list[ShipperProc]
) -> None:
    client = redis.Redis.from_url(redis_url)
    dead = keys.dead_letter(STREAM)
    now_ms = int(time.time() * 1000)
    client.xadd(dead, {b"reason": b"old"}, id=f"{now_ms - 3 * 3600_000}-0")
    client.xadd(dead, {b"reason": b"recent"}, id=f"{now_ms - 60_000}-0")
    proc = start(procs, redis_url, tmp_path, "s1", dead_retention="1h", trim_interval=0.2)
    wait_for(lambda: client.xlen(dead) == 1, what="the old dead letter trimmed")
    assert client.xrange(dead)[0][1][b"reason"] == b"recent"
    wait_for(
        lambda: proc.metric(f'opsq_stream_trimmed_total{{stream="{dead}"}}') == 1,
        what="the trim counted",
    )
    assert proc.stop() == 0


def silent_server() -> tuple[socket.socket, list[socket.socket]]:
    """An HTTP 'server' that accepts connections and never answers (a hung sink)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return listener, held


def test_sigterm_with_a_hung_sink_exits_within_grace_entries_stay_pending(
    redis_url: str, tmp_path: Path, procs: list[ShipperProc]
) -> None:
    client = redis.Redis.from_url(redis_url)
    entries = [make_entry(n) for n in range(5)]
    produce(client, entries)
    listener, _held = silent_server()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        proc = start(
            procs,
            redis_url,
            tmp_path,
            "s1",
            shutdown_grace=GRACE,
            sink={"type": "loki", "url": url, "timeout": "60s"},
        )
        wait_for(lambda: client.xpending(STREAM, GROUP)["pending"] == 5, what="a write hanging")
        try:
            assert proc.stop(timeout=GRACE) == 0
        except subprocess.TimeoutExpired:
            pytest.fail(f"opsq ship overran shutdown_grace ({GRACE}s) with a hung sink")
        assert client.xpending(STREAM, GROUP)["pending"] == 5  # not acknowledged
        attempts = client.hgetall(keys.log_attempts(STREAM, GROUP))
        assert {int(v) for v in attempts.values()} <= {0}  # a shutdown is not a failure
    finally:
        listener.close()


def test_sigterm_with_redis_frozen_exits_within_grace(
    tmp_path: Path, procs: list[ShipperProc]
) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    assert server.proc is not None
    try:
        proc = start(procs, server.url, tmp_path, "s1", shutdown_grace=GRACE)
        server.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.5)  # let the shipper block on the frozen server
        try:
            assert proc.stop(timeout=GRACE) == 0
        except subprocess.TimeoutExpired:
            pytest.fail(f"opsq ship overran shutdown_grace ({GRACE}s) with Redis frozen")
        finally:
            server.proc.send_signal(signal.SIGCONT)
    finally:
        server.stop()
