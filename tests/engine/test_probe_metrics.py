"""The engine records its Prometheus metrics (read back from the in-process registry)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from opsq.engines.probe import run_probes
from tests.engine.conftest import Servers, target


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_counters_histograms_and_failures_move(servers: Servers, key: str) -> None:
    group = f"g-{key}"
    before_retries = _value("opsq_probe_retries_total", group=group)
    run_probes(
        [
            target(f"{servers.http}/ok", name="up", group=group),
            target(f"{servers.http}/hits/{key}/503", name="down", group=group, retries=1),
        ]
    )
    assert _value("opsq_probe_total", group=group, result="up") == 1
    assert _value("opsq_probe_total", group=group, result="down") == 1
    assert _value("opsq_probe_failures_total", group=group, kind="5xx") == 1
    assert _value("opsq_probe_retries_total", group=group) == before_retries + 1
    assert _value("opsq_probe_duration_seconds_count", group=group) == 2
    assert _value("opsq_probe_phase_duration_seconds_count", group=group, phase="connect") >= 2
    assert _value("opsq_probes_in_flight") == 0


def test_url_labels_only_when_asked(servers: Servers, key: str) -> None:
    url = f"{servers.http}/ok?{key}"
    run_probes([target(url, group="plain")])
    assert _value("opsq_probe_url_total", group="plain", url=url, result="up") == 0
    run_probes([target(url, group="plain")], url_labels=True)
    assert _value("opsq_probe_url_total", group="plain", url=url, result="up") == 1
