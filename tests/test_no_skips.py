"""Nothing is skipped under CI=true: the session guard, and the tests' own tool lookups.

tests/support/no_skips.py fails a CI session that skipped anything; these tests run a
small pytest session with it in a subprocess to prove it. Tools are found through
``require_tool``, which knows the Debian package of each (tests/system-packages.txt), so
a lookup of a tool outside that list or a bare ``shutil.which`` is caught here, before
a machine without the tool finds it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import tools

ROOT = Path(__file__).resolve().parents[1]
SKIPPING = """
import pytest

def test_runs():
    pass

def test_needs_something():
    pytest.skip("no such tool here")
"""


def session(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(SKIPPING)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci:
        env["CI"] = "true"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "tests.support.no_skips",
        "-p",
        "no:cacheprovider",
        "-c",
        str(tmp_path / "pytest.ini"),
        str(tmp_path),
    ]
    return subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_skip_fails_the_session_under_ci(tmp_path: Path) -> None:
    """CI=true: one passed and one skipped test make exit status 1, and the skip is named
    with its reason."""
    done = session(tmp_path, ci=True)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "test_inner.py::test_needs_something" in done.stdout
    assert "no such tool here" in done.stdout


def test_a_skip_stays_a_skip_outside_ci(tmp_path: Path) -> None:
    """Without CI=true the same session passes with one skip."""
    done = session(tmp_path, ci=False)
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    assert "1 skipped" in done.stdout


def test_every_tool_the_tests_look_up_is_listed_with_its_package() -> None:
    """Each tool the tests pass to require_tool is a tool of tests/system-packages.txt, and
    no test looks a tool up with shutil.which or skips on a missing import."""
    sources = [p for p in (ROOT / "tests").rglob("*.py") if p.name != "tools.py"]
    needed: set[str] = set()
    bare: list[str] = []
    for path in sources:
        text = path.read_text()
        needed |= set(re.findall(r'require_tool\(\s*"([^"]+)"', text))
        for number, line in enumerate(text.splitlines(), 1):
            if re.search(r"shutil\.which\(|importorskip\(|mark\.skipif\(", line):
                bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert {"promtool", "chromium", "dockerd"} <= needed
    for tool in sorted(needed):
        assert tools._package_of(tool)  # LookupError names the list to add it to
    assert not bare, "use tests.support.tools.require_tool instead:\n" + "\n".join(bare)
