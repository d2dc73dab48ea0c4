"""The command line that runs this same opsq again, as a user would type it.

`opsq up` tells the user what to run next (``opsq runs list``). Printed as a bare
``opsq`` that only works when opsq is on PATH, and after ``make up`` it is not: the
console script is ``.venv/bin/opsq``. So the banner prints the command the way this
process was started: the bare name when PATH finds this very program, else its path
(relative to the current directory when it lies below it, as ``.venv/bin/opsq`` does
for ``make up``), or ``python -m opsq`` with this interpreter for ``python -m opsq``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def _shown(path: Path, cwd: Path) -> str:
    """*path* relative to *cwd* when below it (``./x`` for a file in *cwd*), else absolute."""
    try:
        relative = path.relative_to(cwd)
    except ValueError:
        return str(path)
    text = str(relative)
    return text if os.sep in text else f".{os.sep}{text}"


def opsq_command(argv0: str | None = None, cwd: Path | None = None) -> str:
    """The shell words that start this opsq from *cwd* (default: the current directory)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    cwd = (Path.cwd() if cwd is None else cwd).absolute()
    program = cwd / argv0  # an absolute argv0 stays as it is
    if program.name == "__main__.py":  # python -m opsq
        return f"{shlex.quote(_shown(Path(sys.executable), cwd))} -m opsq"
    on_path = shutil.which(program.name)
    if on_path is not None and program.exists() and Path(on_path).samefile(program):
        return program.name
    return shlex.quote(_shown(program, cwd))


def followup_lines(redis_export: str | None, config_file: str | None) -> list[str]:
    """The banner's "what to run next" lines: an optional export, then the commands."""
    opsq = opsq_command()
    config = f" --config {shlex.quote(str(Path(config_file).absolute()))}" if config_file else ""
    export = [f"  export OPSQ_REDIS_URL={redis_export}"] if redis_export else []
    return [
        *export,
        f"  {opsq} runs list{config}            # recent runs, up/down counts",
        f"  {opsq} runs show <run-id>{config}   # every target with attempts, latency, error",
    ]
