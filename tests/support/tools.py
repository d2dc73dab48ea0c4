"""Find the system tools a test needs, or fail loudly under CI.

``make test`` installs every package listed in ``tests/system-packages.txt`` (as root,
with apt-get). A test that still cannot find its tool fails under ``CI=true`` (a
missing install step must never hide as a skip) and skips elsewhere with a reason that
names the Debian package and the make target that installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

_LIST = Path(__file__).resolve().parents[1] / "system-packages.txt"


def _package_of(tool: str) -> str:
    for line in _LIST.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and fields[0] == tool:
            return fields[1]
    raise LookupError(f"{tool} is not listed in {_LIST}: add '<command> <package>' there")


def require_tool(tool: str) -> str:
    """Absolute path of ``tool`` (a command, or an absolute path); fail under CI, else skip."""
    package = _package_of(tool)
    if tool.startswith("/"):
        found: str | None = tool if Path(tool).exists() else None
    else:
        found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if found:
        return found
    message = (
        f"{tool} is missing: Debian package {package!r}; "
        "`make test` installs it as root (or run `make system-packages`)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError("unreachable")  # pragma: no cover - pytest.skip raises
