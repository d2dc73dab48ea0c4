"""`make dist`: a wheel and a single-file zipapp that runs on its own.

Built the way the Makefile builds it (pip wheel + shiv) into a temporary directory,
then run with the system interpreter, outside the venv: ``--version`` must show the
git commit and build time stamped by hatch_build.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    return next(out.glob("opsq-*.whl"))


def test_wheel_carries_build_info_and_the_demo_targets(tmp_path: Path) -> None:
    """The wheel holds the stamped commit/build time and the packaged demo targets file."""
    head = _head()
    wheel = _wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = zf.read("opsq/core/_build_info.json").decode()
    assert "opsq/cli/demo_targets.yaml" in names
    assert "tasks/app.py" in names
    assert head in info
    assert re.search(r'"build_time": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"', info)


@pytest.mark.slow
@pytest.mark.timeout(360)  # shiv copies every dependency: 35 s alone, over 120 s under load
def test_zipapp_runs_outside_the_venv_and_shows_commit_and_build_time(tmp_path: Path) -> None:
    """opsq.pyz with the system python3 (no venv): --version shows commit and build time,
    and `up --help` imports the whole stack from the zipapp."""
    head = _head()
    wheel = _wheel(tmp_path)
    pyz = tmp_path / "opsq.pyz"
    subprocess.run(
        [str(BIN / "shiv"), "-q", "-E", "-o", str(pyz), "-c", "opsq",
         "-p", "/usr/bin/env python3", str(wheel), "async-timeout"],  # as in the Makefile
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    python = require_tool("/usr/bin/python3")  # the system's, not this venv's
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHIV_ROOT": str(tmp_path / "shiv")}
    out = subprocess.run(
        [python, str(pyz), "--version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(
        rf"opsq \S+ \(commit {head}(-dirty)?, built \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)\n",
        out.stdout,
    ), out.stdout
    assert os.access(pyz, os.X_OK)
    # A command that imports the whole stack (redis, celery, aiohttp) from the zipapp.
    helped = subprocess.run(
        [python, str(pyz), "up", "--help"], env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "--insecure-flower" in helped.stdout
