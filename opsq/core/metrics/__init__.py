"""The metrics registry and the multiprocess rule.

Celery's prefork pool runs tasks in child processes; a plain in-process registry would
show only the parent's (empty) numbers. When ``PROMETHEUS_MULTIPROC_DIR`` is set,
prometheus_client keeps values in per-process mmap files and
:func:`collector_registry` aggregates them at scrape time. The variable must be set
before ``prometheus_client`` is first imported, which :func:`enable_multiprocess`
does for the worker (see ``tasks.celery``).

Metric objects live in one module per area (``probes``, ``cleanup``, ``logs``) so
names are defined once; every name starts with ``opsq_``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(directory: Path, *, wipe: bool) -> None:
    """Point prometheus_client at *directory*; wipe it when a fresh process tree starts."""
    if wipe and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)


def collector_registry() -> CollectorRegistry:
    """The registry to expose: aggregated over processes when in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def mark_process_dead(pid: int) -> None:
    """Drop a dead child's live gauges (called when a pool process exits)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
