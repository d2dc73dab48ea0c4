"""The metrics registry and the multiprocess rule.

Celery's prefork pool runs tasks in child processes; a plain in-process registry would
show only the parent's (empty) numbers. When ``PROMETHEUS_MULTIPROC_DIR`` is set,
prometheus_client keeps values in per-process mmap files and
:func:`collector_registry` aggregates them at scrape time. The variable must be set
before any metric object is constructed, which :func:`enable_multiprocess` does for
the worker (see ``tasks.app``), switching prometheus_client's value class even when a
plugin imported it first. This package imports ``prometheus_client`` only inside
functions so that importing it never fixes the value class by itself.

Metric objects live in one module per area (``probes``, ``cleanup``, ``logs``) so
names are defined once; every name starts with ``opsq_``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(directory: Path, *, wipe: bool) -> None:
    """Point prometheus_client at *directory*; wipe it when a fresh process tree starts."""
    if wipe and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    _switch_value_class()


def _switch_value_class() -> None:
    """Make metrics constructed from now on multiprocess-aware.

    prometheus_client picks its value storage once, at import, from the environment.
    Under ``celery worker`` it is already imported by then: the celery command loads
    its plugins (Flower's imports prometheus_client) before our app module runs. Metric
    objects look ``values.ValueClass`` up when they are constructed, so re-deriving it
    now covers every opsq metric (all defined after this call).
    """
    import sys  # noqa: PLC0415

    loaded = sys.modules.get("prometheus_client.values")
    # Once per process: every get_value_class() call builds a new class with its own
    # table of open files, and two of them in one process append to the same
    # counter_<pid>.db at their own offsets, corrupting it (a worker switches twice: at
    # import and, after wiping the directory, at celeryd_init). The class reads the
    # directory from the environment when it opens a file, so one class serves both.
    if loaded is not None and loaded.ValueClass.__name__ != "MmapedValue":
        loaded.ValueClass = loaded.get_value_class()  # type: ignore[attr-defined]


def collector_registry() -> CollectorRegistry:
    """The registry to expose: aggregated over processes when in multiprocess mode."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess  # noqa: PLC0415

    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def mark_process_dead(pid: int) -> None:
    """Drop a dead child's live gauges (called when a pool process exits)."""
    from prometheus_client import multiprocess  # noqa: PLC0415

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
