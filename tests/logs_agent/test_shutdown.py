"""SIGTERM with Redis frozen: the agent exits within shutdown_grace, checkpointed at the
last acknowledged entry, and a restart sends the rest."""

from __future__ import annotations

import json
import signal
import subprocess
from itertools import accumulate
from pathlib import Path

import pytest
import redis

from agents.checkpoint import FILE_NAME
from opsq.core.redis_server import RedisServer
from tests.logs_agent.conftest import STREAM, all_lines, stream_records, wait_for, write_lines
from tests.logs_agent.process import AgentProcess

GRACE = 3


@pytest.mark.slow
def test_sigterm_with_redis_frozen_exits_within_grace_and_checkpoints_the_last_ack(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    assert server.proc is not None
    log = tmp_path / "logs" / "a.log"
    lines = [b"line %07d " % i + b"y" * 80 for i in range(400_000)]
    write_lines(log, lines)
    cfg = {"paths": [str(log)], "checkpoint_dir": str(tmp_path / "ck"), "shutdown_grace": GRACE}
    agent = AgentProcess(tmp_path, server.url, cfg, stream=STREAM).start()
    again = AgentProcess(tmp_path, server.url, cfg, stream=STREAM, name="again")
    client = redis.Redis.from_url(server.url)
    try:
        wait_for(lambda: client.xlen(STREAM) > 0, what="the first entries")
        server.proc.send_signal(signal.SIGSTOP)  # frozen: connections hang, nothing answers
        try:
            assert agent.terminate(timeout=GRACE) == 0
        except subprocess.TimeoutExpired:
            pytest.fail(f"the agent overran shutdown_grace ({GRACE}s) with Redis frozen")
        finally:
            server.proc.send_signal(signal.SIGCONT)
        [saved] = json.loads((tmp_path / "ck" / FILE_NAME).read_text())["files"]
        shipped = {off for _p, _rid, off, _d in stream_records(client)}
        starts = list(accumulate((len(x) + 1 for x in lines), initial=0))[:-1]
        below = {o for o in starts if o < saved["offset"]}
        assert below <= shipped  # every line below the checkpoint is in Redis
        assert saved["offset"] < log.stat().st_size  # and the unsent rest was not checkpointed
        again.start()
        wait_for(lambda: len(all_lines(client)) == len(lines), timeout=60, what="the rest")
        assert all_lines(client) == lines
    finally:
        agent.stop()
        again.stop()
        server.stop()
