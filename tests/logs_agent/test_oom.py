"""Redis out of memory: per file, lines reach the stream in offset order and a retry
never re-adds what Redis accepted."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import redis

from opsq.core import keys
from opsq.core.redis_server import RedisServer
from tests.logs_agent.conftest import wait_for, write_lines
from tests.logs_agent.process import AgentProcess
from tests.logs_shipper.support import ShipperProc

FILES = 3
LINES = 100_000
BATCH_LINES = 2000  # the default logs.agent.batch_lines


def sink_records(path: Path) -> list[tuple[str, int, str]]:
    """(path, offset, line) of every record in the file sink (rotated parts first), in
    the order written."""
    parts = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    out = []
    for part in [*parts, path]:
        for raw in part.read_bytes().splitlines():
            doc = json.loads(raw)
            out.append((doc["path"], doc["offset"], doc["line"]))
    return out


@pytest.mark.slow
def test_redis_full_then_a_shipper_every_line_in_offset_order_few_duplicates(
    tmp_path: Path,
) -> None:
    """maxmemory 30 MB, noeviction, ~40 MB of lines and no shipper: the agent hits OOM
    and backs off; then a shipper drains the stream and retention frees memory."""
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    try:
        admin = redis.Redis.from_url(server.url)
        admin.config_set("maxmemory", str(30 * 1024 * 1024))
        logs = tmp_path / "logs"
        expected = {}
        rng = random.Random(11)
        for f in range(FILES):
            # Lines of very different lengths make entries of very different sizes: a
            # big XADD refused while its query buffer pushes Redis over maxmemory, and
            # a smaller one after it accepted, is how the order broke.
            lines = [
                b"file%d line %07d %s" % (f, i, b"p" * min(4000, int(rng.paretovariate(1.2) * 40)))
                for i in range(LINES)
            ]
            write_lines(logs / f"f{f}.log", lines)
            expected[str(logs / f"f{f}.log")] = [x.decode() for x in lines]
        cfg = {"paths": [str(logs / "*.log")], "checkpoint_dir": str(tmp_path / "ck")}
        agent = AgentProcess(tmp_path, server.url, cfg, stream=keys.LOG_STREAM).start()
        wait_for(
            lambda: agent.metric("opsq_agent_send_errors_total") >= 3,
            timeout=60,
            what="Redis refusing writes (OOM)",
        )
        assert "OOM" in agent.log_file.read_text()
        shipper = ShipperProc(server.url, tmp_path, "s1", trim_interval=1, batch=20).start()
        total = FILES * LINES
        wait_for(
            lambda: shipper.metric("opsq_shipper_records_total") >= total,
            timeout=90,
            what="every line in the sink",
        )
        oom_events = agent.metric("opsq_agent_send_errors_total")
        assert agent.terminate() == 0
        assert shipper.stop() == 0
        records = sink_records(shipper.sink_path)
        first_seen: dict[str, list[int]] = {}
        lines: dict[str, list[str]] = {}
        seen: set[tuple[str, int]] = set()
        for path, off, line in records:
            if (path, off) not in seen:
                seen.add((path, off))
                first_seen.setdefault(path, []).append(off)
                lines.setdefault(path, []).append(line)
        assert lines == expected  # every line, each file in order
        for offsets in first_seen.values():
            assert offsets == sorted(offsets)
        duplicates = sum(n - 1 for n in Counter((p, o) for p, o, _ in records).values())
        assert duplicates <= BATCH_LINES * oom_events
    finally:
        server.stop()
