"""The engine records its Prometheus metrics (read back from the in-process registry)."""

from __future__ import annotations

import os
import subprocess
import sys

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess

from opsq.engines.probe import run_probes
from tests.engine.conftest import Servers, target
from tests.support.tools import require_tool


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
    assert _value("opsq_probe_failures_total", group=group, kind="status") == 1
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


def test_url_labels_carry_no_secrets(servers: Servers, key: str) -> None:
    """/metrics is printed too: a ?access_token= in a probed URL is redacted in its label."""
    url = f"{servers.http}/ok?access_token=tok-{key}"
    run_probes([target(url, group="secret")], url_labels=True)
    shown = f"{servers.http}/ok?access_token=***"
    assert _value("opsq_probe_url_total", group="secret", url=shown, result="up") == 1
    assert f"tok-{key}" not in generate_latest(REGISTRY).decode()


def test_metrics_aggregate_in_multiprocess_mode(servers: Servers, key: str, tmp_path) -> None:
    """A worker child process writes to PROMETHEUS_MULTIPROC_DIR; the collector sums it."""
    code = (
        "import sys\n"
        "from opsq.engines.probe import run_probes\n"
        "from tests.engine.conftest import target\n"
        "urls = sys.argv[2:]\n"
        "run_probes([target(u, name=f'n{i}', group=sys.argv[1]) for i, u in enumerate(urls)])\n"
    )
    group = f"mp-{key}"
    urls = [f"{servers.http}/ok", f"{servers.http}/hits/{key}/500"]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):  # two processes, as two prefork children would be
        subprocess.run([sys.executable, "-c", code, group, *urls], env=env, check=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("opsq_probe_total", {"group": group, "result": "up"}) == 2
    down = {"group": group, "kind": "status"}
    assert registry.get_sample_value("opsq_probe_failures_total", down) == 2
    assert registry.get_sample_value("opsq_probe_duration_seconds_count", {"group": group}) == 4


def test_exposition_passes_promtool_check_metrics(servers: Servers, key: str) -> None:
    promtool = require_tool("promtool")
    run_probes([target(f"{servers.http}/ok", group=f"pt-{key}")], url_labels=True)
    text = generate_latest(REGISTRY)
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, check=False
    )
    opsq_problems = [
        line
        for line in proc.stdout.decode().splitlines() + proc.stderr.decode().splitlines()
        if line.startswith("opsq_probe")
    ]
    assert opsq_problems == []
