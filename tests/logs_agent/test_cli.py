"""``opsq agent`` as a process: endpoints, metrics exposition, SIGTERM, config errors."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
from pathlib import Path

import pytest
import redis
from prometheus_client import generate_latest

from agents.checkpoint import FILE_NAME
from opsq.core.metrics import collector_registry
from tests.logs_agent.conftest import STREAM, agent_settings, all_lines, wait_for, write_lines
from tests.logs_agent.process import OPSQ, AgentProcess
from tests.support.tools import require_tool


def promtool_ok(text: bytes) -> None:
    res = subprocess.run(
        check=False,
        args=[require_tool("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_in_process_metrics_pass_promtool(tmp_path: Path, run_agent, raw_client) -> None:
    write_lines(tmp_path / "logs" / "a.log", [b"x"] * 10)
    run_agent(agent_settings(tmp_path))
    wait_for(lambda: len(all_lines(raw_client)) == 10, what="lines")
    log_path = str(tmp_path / "logs" / "a.log").encode()
    # the reader sets the lag gauge after its read round, which may finish after the ack
    wait_for(lambda: log_path in generate_latest(collector_registry()), what="lag gauge")
    text = generate_latest(collector_registry())
    assert b"opsq_agent_lines_read_total" in text
    promtool_ok(text)


def test_sigterm_drains_flushes_checkpoints_and_exits_zero(tmp_path: Path, redis_url: str) -> None:
    log = tmp_path / "logs" / "a.log"
    lines = [b"l%06d" % i for i in range(50_000)]
    write_lines(log, lines)
    cfg = {"paths": [str(log)], "checkpoint_dir": str(tmp_path / "ck")}
    agent = AgentProcess(tmp_path, redis_url, cfg, stream=STREAM).start()
    try:
        client = redis.Redis.from_url(redis_url)
        assert agent.get("/readyz").strip() == json.dumps({"redis": True})
        wait_for(lambda: len(all_lines(client)) == 50_000, what="all lines")
        promtool_ok(agent.get("/metrics").encode())
        assert agent.metric("opsq_agent_lines_read_total") == 50_000
        assert agent.terminate() == 0
        doc = json.loads((tmp_path / "ck" / FILE_NAME).read_text())
        assert [f["offset"] for f in doc["files"]] == [log.stat().st_size]
    finally:
        agent.stop()


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("logs: {agent: {paths: []}}\n", "logs.agent.paths"),
        ("logs: {agent: {paths: [x], multiline: {start_pattern: '(['}}}\n", "start_pattern"),
        ("logs: {agent: {paths: [x], checkpoint_dir: /proc/opsq}}\n", "checkpoint_dir"),
    ],
)
def test_bad_agent_settings_are_a_config_error_exit_2(
    tmp_path: Path, yaml_text: str, field: str
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    res = subprocess.run(
        check=False, args=[OPSQ, "agent", "--config", str(cfg)], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert field in res.stderr


def test_sigterm_with_redis_down_exits_zero_within_grace_keeping_the_checkpoint(
    tmp_path: Path, redis_server, redis_url: str
) -> None:
    log = tmp_path / "logs" / "a.log"
    write_lines(log, [b"waiting %d" % i for i in range(1000)])
    cfg = {"paths": [str(log)], "checkpoint_dir": str(tmp_path / "ck"), "shutdown_grace": 1}
    redis_server.stop()
    agent = AgentProcess(tmp_path, redis_url, cfg, stream=STREAM).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            agent.get("/readyz")
        assert err.value.code == 503
        wait_for(lambda: agent.metric("opsq_agent_send_errors_total") > 0, what="send errors")
        assert agent.terminate(timeout=30) == 0
        doc = json.loads((tmp_path / "ck" / FILE_NAME).read_text())
        assert [f["offset"] for f in doc["files"]] == [0]  # nothing acknowledged
    finally:
        agent.stop()


def test_a_log_directory_created_after_start_is_found_by_rescan(
    tmp_path: Path, run_agent, raw_client
) -> None:
    """No directory to watch at start (so no inotify): the periodic rescan finds it."""
    run_agent(agent_settings(tmp_path))
    write_lines(tmp_path / "logs" / "late.log", [b"found"])
    wait_for(lambda: all_lines(raw_client) == [b"found"], what="file in the new directory")


def test_a_stream_key_of_the_wrong_type_stops_the_agent(tmp_path: Path, redis_url: str) -> None:
    """WRONGTYPE on XADD is permanent (opsq.core.redis_errors): the agent exits non-zero
    with the reason in its log instead of retrying forever, and no checkpoint moves."""
    redis.Redis.from_url(redis_url).set(STREAM, "not a stream")
    log = tmp_path / "logs" / "a.log"
    write_lines(log, [])
    cfg = {"paths": [str(log)], "checkpoint_dir": str(tmp_path / "ck"), "rescan_interval": 0.2}
    agent = AgentProcess(tmp_path, redis_url, cfg, stream=STREAM).start()
    try:
        write_lines(log, [b"one", b"two"])
        assert agent.proc is not None
        code = agent.proc.wait(30)
    finally:
        agent.stop()
    output = agent.log_file.read_text()
    assert code != 0
    assert "XADD refused for good" in output
    assert "WRONGTYPE" in output
    assert redis.Redis.from_url(redis_url).get(STREAM) == b"not a stream"


@pytest.mark.parametrize(
    ("command", "section"), [("agent", "agent"), ("ship", "shipper")], ids=["agent", "ship"]
)
def test_a_metrics_port_in_use_is_exit_2_naming_the_setting(
    tmp_path: Path, command: str, section: str
) -> None:
    """Hostile check F5: a second agent (or one restarted before the old one was gone)
    on the same metrics port died with a bind traceback, exit 1."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        logs = {
            "agent": {"paths": [str(tmp_path / "*.log")], "checkpoint_dir": str(tmp_path)},
            "shipper": {"sink": {"type": "stdout"}},
        }
        logs[section]["metrics_port"] = port
        cfg = tmp_path / "c.yaml"
        cfg.write_text(json.dumps({"redis_url": "redis://127.0.0.1:1/0", "logs": logs}))
        res = subprocess.run(
            [OPSQ, command, "--config", str(cfg)], check=False, capture_output=True, text=True
        )
    assert res.returncode == 2, res.stderr
    assert f"logs.{section}.metrics_port" in res.stderr
    assert "Traceback" not in res.stderr
