"""Kubelet rotation under a writer, with the agent killed -9 three times.

A container writes through containerd's CRI logger (:class:`CriWriter`, with
``max_container_log_line_size`` 256 so long lines split into several ``P`` parts) while
the kubelet rotates its log the way ``container_log_manager.go`` does: compress the
previous rotated file (``.tmp`` then ``.gz``, original removed), rename ``0.log`` to
``0.log.<stamp>``, reopen (the compression waits, as the kubelet's 10 s rotation interval
lets it, until the agent has read the file). Every rotation lands in the middle of a
long stdout line and of a long stderr line, so their parts straddle two files. The agent
(a real ``opsq agent`` process with the chart's paths: ``*.log`` and ``*.log.*``,
``*.gz``/``*.tmp`` excluded, ``format: auto``) is killed with SIGKILL three times while
this goes on.

At the end every logical line is in the stream exactly once after dedupe by record id,
with the time of its first part and its stream, joined whole even when its parts span
a rotation; nothing from a ``.gz`` is shipped; and ``opsq ship`` writes the records to
the file sink with ts, stream and the pod fields.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
import redis

from agents.formats import split_framed
from opsq.core.logformat import decode, record_id
from tests.k8slogs.runtimes import Clock, CriWriter, kubelet_compress, kubelet_rotate
from tests.logs_agent.process import AgentProcess
from tests.logs_shipper.support import STREAM, ShipperProc, sink_docs, wait_for

POD = "shop_web-5d8f9c7b6-x2x4q_0b6a8f2e-1111-4222-8333-444455556666"
MAX_LEN = 256
ROTATIONS = 4
LINES_PER_PERIOD = 240
PAUSE_S = 0.6
"""Every 40 lines: a rotation period of ~4 s (the kubelet's is at least 10 s)."""

Line = tuple[bytes, bytes, bytes]
"""(runtime time of the first part, stream, message)"""


def read_to_end(checkpoints: Path, path: Path, timeout: float = 90.0) -> None:
    """Wait until the agent's checkpoint covers *path* to its end.

    The kubelet compresses a rotated file only at its next rotation, at least its 10 s
    monitor period later, and the agent is built to finish it within that time. On a
    loaded test machine an agent restart alone can take longer than the ~4 s period used
    here, so the emulated kubelet waits for that guarantee instead of assuming it.
    """
    st = path.stat()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            files = json.loads(checkpoints.read_text())["files"]
        except (OSError, ValueError, KeyError):
            files = []
        if any(f["ino"] == st.st_ino and f["offset"] >= st.st_size for f in files):
            return
        time.sleep(0.05)
    raise AssertionError(f"the agent never finished {path.name}")


class Container(threading.Thread):
    """Writes numbered lines through containerd's logger; the kubelet rotates mid-line."""

    def __init__(self, root: Path, checkpoints: Path) -> None:
        super().__init__(daemon=True)
        self.checkpoints = checkpoints
        self.log = root / POD / "app" / "0.log"
        self.clock = Clock(1_795_000_000 * 10**9, step_ns=1_000)
        self.writer = CriWriter(self.log, self.clock, max_len=MAX_LEN)
        self.expected: list[Line] = []
        self.straddled: list[bytes] = []
        self.rotated: list[Path] = []
        self.rng = random.Random(1411)
        self.seq = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for period in range(ROTATIONS):
                for i in range(LINES_PER_PERIOD):
                    stream = "stderr" if i % 7 == 3 else "stdout"
                    self._write_line(stream, self._message(long=i % 13 == 0))
                    if i % 40 == 39:
                        time.sleep(PAUSE_S)
                self._rotate_mid_line(period)
            for _ in range(50):
                self._write_line("stdout", self._message(long=False))
            self.writer.close()
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            raise

    def _message(self, *, long: bool) -> bytes:
        self.seq += 1
        size = self.rng.randint(600, 1400) if long else self.rng.randint(5, 120)
        return b"L%06d " % self.seq + bytes(self.rng.choices(b"abcdefghij ", k=size))

    def _write_line(self, stream: str, message: bytes) -> None:
        stamps = self.writer.write(stream, message + b"\n")
        self.expected.append((stamps[0], stream.encode(), message))

    def _rotate_mid_line(self, period: int) -> None:
        """First parts of a long stdout and stderr line, rotation, then the rest."""
        opened = []
        for stream in ("stdout", "stderr"):
            message = self._message(long=True)
            parts = self.writer.physical_lines(stream, message + b"\n")
            assert len(parts) >= 3
            stamp = self.writer.write_physical(stream, *parts[0])
            self.expected.append((stamp, stream.encode(), message))
            opened.append((stream, parts[1:], message))
        if self.rotated:
            read_to_end(self.checkpoints, self.rotated[-1])
            kubelet_compress(self.rotated[-1])
        self.rotated.append(
            kubelet_rotate(self.log, f"20261118-{110000 + period:06d}", self.writer.reopen)
        )
        for stream, rest, message in opened:
            for tag, content in rest:
                self.writer.write_physical(stream, tag, content)
            self.straddled.append(message)


def unique_lines(client: redis.Redis) -> tuple[dict[str, Line], int]:
    """Records after dedupe by id (id -> line), and how many records there were."""
    out: dict[str, Line] = {}
    total = 0
    for _, fields in client.xrange(STREAM):
        entry = decode(fields)
        assert not entry.path.endswith((".gz", ".tmp")), entry.path
        assert entry.fmt == "cri"
        for off, raw in entry.records:
            total += 1
            out.setdefault(record_id(entry.fid, off), split_framed(raw))
    return out, total


@pytest.mark.slow
def test_every_line_arrives_once_across_kubelet_rotations_and_three_kill_9(
    tmp_path: Path, redis_url: str
) -> None:
    """Writer + kubelet rotation (rename, reopen, gzip) + 3 x kill -9 of the agent:
    each logical line once, whole, with its runtime time and stream."""
    pods = tmp_path / "pods"
    container = Container(pods, tmp_path / "ckpt" / "checkpoints.json")
    config = {
        "paths": [str(pods / "*/*/*.log"), str(pods / "*/*/*.log.*")],
        "exclude": ["*.gz", "*.tmp"],
        "format": "auto",
        "kubernetes": {"pods_dir": str(pods), "node_name": "node-a"},
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "rescan_interval": 0.3,
        "checkpoint_every": 0.2,
        "batch_lines": 50,
    }
    agent = AgentProcess(tmp_path, redis_url, config, stream=STREAM).start()
    client = redis.Redis.from_url(redis_url)
    container.start()
    kills = random.Random(9)
    try:
        for _ in range(3):
            time.sleep(1.0 + kills.random() * 1.5)
            agent.kill9()
            assert container.error is None
            assert container.is_alive(), "every kill lands while the container writes"
            agent.start()
        container.join(120)
        assert container.error is None
        want = {message: (stamp, stream) for stamp, stream, message in container.expected}

        def all_arrived() -> bool:
            got, _ = unique_lines(client)
            return {m for _, _, m in got.values()} >= set(want)

        wait_for(all_arrived, 90, "every logical line in the stream")
        got, total = unique_lines(client)
        messages = [m for _, _, m in got.values()]
        assert sorted(messages) == sorted(want), "each line once after dedupe by id"
        for stamp, stream, message in got.values():
            assert (stamp, stream) == want[message], message[:8]
        assert len(container.straddled) == 2 * ROTATIONS
        assert set(container.straddled) <= set(messages), "joined across the rotation"
        assert total >= len(want)
        assert list(pods.glob("*/*/*.gz")), "the kubelet did compress rotated files"
        assert agent.terminate() == 0
    finally:
        agent.stop()
    shipper = ShipperProc(redis_url, tmp_path, "s1").start()
    try:
        wait_for(lambda: len({d["id"] for d in sink_docs(tmp_path, "sink-*.jsonl")}) >= len(want),
                 60, "the sink to hold every record")  # fmt: skip
    finally:
        assert shipper.stop() == 0
        client.close()
    doc = next(
        d
        for d in sink_docs(tmp_path, "sink-*.jsonl")
        if d["line"] == container.straddled[0].decode()
    )
    stamp, stream = want[container.straddled[0]]
    assert (doc["ts"], doc["stream"]) == (stamp.decode(), stream.decode())
    assert (doc["namespace"], doc["pod"], doc["container"]) == (
        "shop",
        "web-5d8f9c7b6-x2x4q",
        "app",
    )
    assert doc["pod_uid"] == POD.split("_")[2]
    assert doc["node"] == "node-a"
