"""Version, git commit and build time, from package metadata stamped at build time.

``importlib.metadata`` is imported only when a version is asked for: every ``opsq``
command imports this module (for ``--version``) and the import costs ~60 ms of start-up.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

_BUILD_INFO = Path(__file__).with_name("_build_info.json")


def version_info() -> dict[str, str]:
    from importlib import metadata  # noqa: PLC0415 - see the module docstring

    try:
        version = metadata.version("opsq")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    info = {"version": version, "commit": "unknown", "build_time": "unknown"}
    with contextlib.suppress(OSError, ValueError):
        info.update(json.loads(_BUILD_INFO.read_text()))
    return info


def version_line() -> str:
    info = version_info()
    return f"opsq {info['version']} (commit {info['commit']}, built {info['build_time']})"
