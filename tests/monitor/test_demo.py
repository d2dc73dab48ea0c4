"""`opsq up --demo` shows an alert firing and resolving on its local webhook receiver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsq.core.redis_server import free_port


@pytest.mark.slow
def test_up_demo_prints_the_toggle_alert_firing_then_resolving(tmp_path: Path) -> None:
    """The demo's toggle target flips every 10 s here (30 s by default); the receiver's
    lines in opsq up's own output show it fire and then resolve, with the reason."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSQ_")}
    env["OPSQ_DEMO_TOGGLE_PERIOD"] = "10"
    out = tmp_path / "up.out"
    argv = [
        sys.executable,
        "-m",
        "opsq",
        "up",
        "--demo",
        "--data-dir",
        str(tmp_path / "data"),
        "--redis-port",
        "0",
        "--metrics-port",
        "0",
        "--flower-port",
        str(free_port()),
    ]
    with out.open("wb") as sink:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 100
        text = ""
        while time.monotonic() < deadline and proc.poll() is None:
            text = out.read_text(errors="replace")
            if "demo receiver got resolved" in text:
                break
            time.sleep(0.5)
        assert "demo receiver got firing: [DOWN] demo/toggle (status)" in text, text
        assert "demo receiver got resolved: [RESOLVED] demo/toggle: down -> up" in text, text
        assert text.index("got firing") < text.index("got resolved")
        assert "alerts     http://127.0.0.1:" in text  # the banner names the receiver
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
