"""A worker (or beat) that cannot bind its metrics port refuses to start, loudly.

Issue 9: a worker whose port was taken kept running without /metrics and /readyz,
with one ERROR line as the only trace. Now it exits 2 before taking any work, naming
the port and the fix; port 0 picks a free port and logs it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.workers import ROOT


def _celery(
    role: str, redis_url: str, tmp_path: Path, port: int
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "celery", "-A", "tasks", role, "--loglevel", "INFO"]
    if role == "worker":
        argv += ["--pool", "solo", "--without-gossip", "--without-mingle"]
    else:
        argv += ["--schedule", str(tmp_path / "beat-schedule")]
    env = {**os.environ, "OPSQ_REDIS_URL": redis_url, "OPSQ_DATA_DIR": str(tmp_path / "data"),
           "OPSQ_METRICS__PORT": str(port)}  # fmt: skip
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_a_taken_metrics_port_stops_the_process_with_the_fix(
    role: str, redis_url: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _celery(role, redis_url, tmp_path, port)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert re.search(rf"{role}: cannot serve /metrics, /healthz and /readyz on 127\.0\.0\.1:{port}",
                     output), output  # fmt: skip
    assert "set metrics.port, OPSQ_METRICS__PORT, to a free port, or 0" in output
    assert " ready." not in output  # it never took work
