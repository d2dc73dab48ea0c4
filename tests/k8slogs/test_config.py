"""Kubernetes settings of the agent and the Loki sink: mistakes exit 2 naming the field."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.logs_agent.process import OPSQ


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("logs: {agent: {paths: [x], format: json}}\n", "logs.agent.format"),
        ("logs: {agent: {paths: [x], formats: {'*.log': csv}}}\n", "logs.agent.formats"),
        (
            "logs: {agent: {paths: [x], kubernetes: {metadata: {enabled: true}}}}\n",
            "NODE_NAME",
        ),
        ("logs: {shipper: {sink: {type: loki, url: 'http://l', label_fields: [pod_uid]}}}\n",
         "pod_uid"),
        (
            "logs: {agent: {paths: [x], kubernetes: {node_name: n, metadata: "
            "{enabled: true, kubeconfig: /nonexistent/kubeconfig}}}}\n",
            "logs.agent.kubernetes.metadata.kubeconfig",
        ),
        ("logs: {shipper: {sink: {type: loki, url: 'http://l', label_fields: [pod, label.pod]}}}\n",
         "label.pod"),
        ("logs: {agent: {paths: []}}\n", "logs.agent.paths"),
    ],
    ids=["format", "formats", "node-name", "unbounded-loki-label", "kubeconfig",
         "loki-label-twice", "no-paths"],
)  # fmt: skip
def test_kubernetes_settings_mistakes_exit_2_naming_the_field(
    tmp_path: Path, yaml_text: str, needle: str
) -> None:
    """A bad format, metadata without a node name, a pod uid as Loki label: exit 2."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    env = {k: v for k, v in os.environ.items() if k != "NODE_NAME"}
    res = subprocess.run(
        [OPSQ, "agent", "--config", str(cfg)], check=False, capture_output=True, text=True,
        env=env, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr
    assert str(cfg) in res.stderr, "the file is named"
    assert "--kubeconfig" not in res.stderr, "opsq agent has no such flag"
