"""Cleanup metric names and labels pass `promtool check metrics` (Prometheus naming rules)."""

from __future__ import annotations

import subprocess

from prometheus_client import CollectorRegistry, generate_latest

from opsq.core.metrics import cleanup as metrics
from tests.support.tools import require_tool


def test_cleanup_metrics_pass_promtool() -> None:
    registry = CollectorRegistry()
    families = [
        metrics.CLEANUP_OBJECTS, metrics.TERMINATING_SEEN, metrics.KUBE_API_REQUESTS,
        metrics.WATCH_RESTARTS, metrics.WATCH_RELISTS, metrics.INFORMER_CACHE_OBJECTS,
    ]  # fmt: skip
    for family in families:
        registry.register(family)
    metrics.CLEANUP_OBJECTS.labels("batch/v1/jobs", "r", "deleted", "job-finished").inc()
    metrics.KUBE_API_REQUESTS.labels("delete", "200").inc()
    text = generate_latest(registry)
    for family in families:
        assert family._name.startswith("opsq_")  # type: ignore[attr-defined]
    result = subprocess.run(
        [require_tool("promtool"), "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
