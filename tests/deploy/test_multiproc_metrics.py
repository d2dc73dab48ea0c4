"""Multiprocess metrics stay readable when metric modules are imported late.

A Celery worker switches prometheus_client to multiprocess mode at import and again
(with a wiped directory) at ``celeryd_init``; metric modules imported lazily by a
task (the cleanup metrics, say) are constructed after the second switch. If each
switch created a new value class, one process would hold two independent writers of
the same ``counter_<pid>.db`` file, each appending at its own offset: the file is
corrupted and every scrape of /metrics fails with a JSONDecodeError. Run in a
subprocess because prometheus_client keeps process-global state.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from opsq.core.metrics import enable_multiprocess, collector_registry
    from prometheus_client import generate_latest
    directory = Path({directory!r})
    enable_multiprocess(directory, wipe=False)      # tasks.app at import
    from prometheus_client import Counter
    early = Counter("opsq_test_early_total", "unlabelled, defined at import")
    enable_multiprocess(directory, wipe=True)       # celeryd_init, before the pool forks
    late = Counter("opsq_test_late_total", "defined by a lazily imported module", ["n"])
    pid = os.fork()                                 # a prefork pool process
    if pid == 0:
        for i in range(40):                         # each closure appends new keys
            late.labels(str(i)).inc()
            early.inc()
        os._exit(0)
    os.waitpid(pid, 0)
    text = generate_latest(collector_registry()).decode()
    assert "opsq_test_early_total 40.0" in text, text
    assert text.count("opsq_test_late_total{{") == 40, text
    print("ok")
"""


def test_switching_twice_keeps_one_writer_per_file(tmp_path: Path) -> None:
    """Counters created before and after the second switch all read back, no corruption."""
    code = textwrap.dedent(PROGRAM).format(root=str(ROOT), directory=str(tmp_path / "m"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"
