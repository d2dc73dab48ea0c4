"""What `opsq up` decides to run, before anything runs; and the demo endpoints.

The plan is checked without starting processes: Flower's password never on a command
line, optional components only when configured, distinct ports, one data dir per
child, and a demo targets file that opsq's own validation accepts.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from opsq.cli import invocation, up_cmd
from opsq.cli.demo import make_app, render_targets
from opsq.cli.supervisor import SESSION_ENV, Child
from opsq.cli.up_cmd import Builder, UpOptions
from opsq.core.config.probes import TargetsFile
from opsq.core.loading import validate_file
from opsq.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def plan_for(tmp_path: Path, options: UpOptions | None = None, **overrides: Any):  # type: ignore[no-untyped-def]
    settings = load_settings(None, **overrides)
    builder = Builder(
        settings, options or UpOptions(metrics_port=0, flower_port=0), tmp_path,
        "redis://127.0.0.1:1/0", "sess", None,
    )  # fmt: skip
    plan = builder.build()
    return {c.name: c for c in plan.children if isinstance(c, Child)}, plan


def test_flower_password_is_in_the_environment_never_on_the_command_line(tmp_path: Path) -> None:
    """`ps` shows argv to every local user; the password travels in FLOWER_BASIC_AUTH."""
    children, plan = plan_for(tmp_path)
    flower = children["flower"]
    user, password = plan.flower_auth
    assert flower.env["FLOWER_BASIC_AUTH"] == f"{user}:{password}"
    assert len(password) >= 20
    assert not any(password in part for part in flower.argv)
    assert flower.argv[flower.argv.index("tasks") + 1] == "flower"
    assert "--address=127.0.0.1" in flower.argv


def test_configured_flower_password_is_used_and_not_printed(tmp_path: Path) -> None:
    """flower.password from the config wins; the banner does not repeat it."""
    _, plan = plan_for(tmp_path, flower={"user": "ops", "password": "hunter22"})
    assert plan.flower_auth == ("ops", "hunter22")
    assert not any("hunter22" in line for line in plan.lines)


def test_insecure_flower_needs_the_flag_and_says_so(tmp_path: Path) -> None:
    """--insecure-flower: no FLOWER_BASIC_AUTH, and a loud warning in the banner."""
    children, plan = plan_for(
        tmp_path, UpOptions(metrics_port=0, flower_port=0, insecure_flower=True)
    )
    assert "FLOWER_BASIC_AUTH" not in children["flower"].env
    assert plan.flower_auth is None
    assert any("NO AUTHENTICATION" in line for line in plan.lines)


def test_core_components_always_optional_ones_only_when_configured(tmp_path: Path) -> None:
    """Without log paths or cleanup rules: no agent, shipper or watcher."""
    children, _ = plan_for(tmp_path, UpOptions(metrics_port=0, flower_port=0, workers=2))
    assert set(children) == {"worker-1", "worker-2", "beat", "flower", "web"}
    children, _ = plan_for(tmp_path, logs={"agent": {"paths": ["/var/log/*.log"]}})
    assert {"agent", "shipper"} <= set(children)
    assert children["agent"].argv[-1] == "agent"
    assert children["shipper"].argv[-1] == "ship"
    assert "watcher" not in children
    rule = {"name": "old-pods", "resource": "v1/pods", "when": {"older_than": "1h"}}
    children, _ = plan_for(tmp_path, cleanup={"rules": [rule]})
    assert children["watcher"].argv[-1] == "watch"


def test_each_child_gets_its_own_port_data_dir_and_session(tmp_path: Path) -> None:
    """Distinct metrics ports and data dirs (a worker wipes its metrics dir at start)."""
    children, plan = plan_for(
        tmp_path, UpOptions(metrics_port=0, flower_port=0, workers=3),
        logs={"agent": {"paths": ["/x/*.log"]}},
    )  # fmt: skip
    ports = [url.rsplit(":", 1)[1] for url in plan.metrics_urls.values()]
    assert len(ports) == len(set(ports)) == 6  # 3 workers, beat, agent, shipper
    data_dirs = [c.env["OPSQ_DATA_DIR"] for c in children.values()]
    assert len(data_dirs) == len(set(data_dirs))
    assert {c.env[SESSION_ENV] for c in children.values()} == {"sess"}
    assert {c.env["OPSQ_REDIS_URL"] for c in children.values()} == {"redis://127.0.0.1:1/0"}


def test_demo_adds_endpoints_and_a_probe_set_every_child_sees(tmp_path: Path) -> None:
    """--demo: a demo child, and probes.sets.demo in every child's environment."""
    children, _ = plan_for(tmp_path, UpOptions(metrics_port=0, flower_port=0, demo=True))
    assert "demo" in children
    worker_env = children["worker-1"].env
    assert worker_env["OPSQ_PROBES__SETS__DEMO__INTERVAL"] == "10"
    targets = validate_file(TargetsFile, Path(worker_env["OPSQ_PROBES__SETS__DEMO__FILE"]))
    assert {t.name for t in targets.targets} >= {"healthy", "slow", "flaky", "failing"}


def test_rendered_demo_targets_point_at_the_demo_server(tmp_path: Path) -> None:
    """The packaged template becomes a valid targets file for the given address."""
    path = render_targets(tmp_path / "t.yaml", demo_address="127.0.0.1:8123", closed_port=9)
    targets = validate_file(TargetsFile, path).targets
    urls = {t.name: t.url for t in targets}
    assert urls["healthy"] == "http://127.0.0.1:8123/healthy"
    assert urls["closed-port"] == "tcp://127.0.0.1:9"
    assert next(t for t in targets if t.name == "flaky").retries >= 2


@pytest.mark.parametrize(
    ("path", "statuses"),
    [
        ("/healthy", [200, 200, 200]),
        ("/failing", [500, 500, 500]),
        ("/flaky", [503, 503, 200, 503, 503, 200]),
    ],
)
def test_demo_endpoints_behave_as_advertised(path: str, statuses: list[int]) -> None:
    """healthy always 200, failing always 500, flaky 200 once in three."""

    async def go() -> list[int]:
        async with TestClient(TestServer(make_app())) as client:
            seen = []
            for _ in statuses:
                response = await client.get(path)
                seen.append(response.status)
            return seen

    assert asyncio.run(go()) == statuses


def _opsq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSQ_")}
    return subprocess.run([sys.executable, "-m", "opsq", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_busy_redis_port_is_refused_with_the_fix(tmp_path: Path) -> None:
    """Embedded Redis port in use: exit 1 naming --redis-port 0 / --redis-url; nothing starts."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _opsq("up", "--data-dir", str(tmp_path / "d"), "--redis-port", str(port),
                    cwd=tmp_path)  # fmt: skip
    assert out.returncode == 1
    assert f"port {port} is in use" in out.stderr
    assert "--redis-port 0" in out.stderr
    assert not (tmp_path / "d" / "logs").exists()


def test_bad_config_exits_2_before_starting_anything(tmp_path: Path) -> None:
    """A config typo fails `opsq up` at once with file, field and fix (exit 2)."""
    config = tmp_path / "opsq.yaml"
    config.write_text("flower:\n  pasword: x\n")
    out = _opsq("up", "--config", str(config), "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert out.returncode == 2
    assert "flower.pasword" in out.stderr
    assert "unknown field" in out.stderr
    assert not (tmp_path / "d").exists()


def test_default_redis_port_taken_falls_back_to_a_free_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no --redis-port, a busy conventional port (a laptop's own Redis) is not an error."""

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        monkeypatch.setattr(up_cmd, "DEFAULT_REDIS_PORT", taken)
        server = up_cmd.embedded_redis(tmp_path, None)
    assert server.port != taken
    assert server.port > 0


def test_banner_command_is_the_one_make_up_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make up` runs .venv/bin/opsq from the repo: the banner prints that path, not a
    bare `opsq` that is not on PATH; `python -m opsq` prints the interpreter; a program
    PATH finds is printed bare."""
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    script = tmp_path / ".venv" / "bin" / "opsq"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert invocation.opsq_command(".venv/bin/opsq", tmp_path) == ".venv/bin/opsq"
    assert invocation.opsq_command(str(script), tmp_path / "elsewhere") == str(script)
    (tmp_path / "opsq.pyz").write_text("")
    assert invocation.opsq_command("opsq.pyz", tmp_path) == "./opsq.pyz"
    python_m = invocation.opsq_command("/src/opsq/__main__.py", tmp_path)
    assert python_m == f"{sys.executable} -m opsq"
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    assert invocation.opsq_command(str(script), tmp_path / "elsewhere") == "opsq"


def test_banner_commands_run_from_the_repo(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The follow-up lines for an embedded Redis off 6379, as `make up` prints them
    (the console script relative to the repo), run in a shell at the repo root with
    no OPSQ_* variable and no virtualenv on PATH."""
    script = Path(sys.executable).parent / "opsq"
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [os.path.relpath(script, ROOT), "up", "--demo"])
    lines = invocation.followup_lines(redis_url, None)
    assert lines[0].strip() == f"export OPSQ_REDIS_URL={redis_url}"
    commands = [line.split("#")[0].strip() for line in lines[:2]]
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    listed = subprocess.run(
        ["bash", "-c", "\n".join(commands)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, (commands, listed.stderr)
