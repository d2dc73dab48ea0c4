"""Render the opsq Helm chart with Helm's own template engine, for tests.

``helm-python-sdk`` binds Helm's Go SDK, so what these helpers return is exactly what
``helm template`` would produce, offline (``lookup`` returns nothing). The cleanup
tests import :func:`watcher_role_rules` to load the Role the chart renders into the
fake API server, so the chart and ``opsq cleanup rbac`` are checked against each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from helm_python import Chart

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "opsq"
RELEASE = "opsq"
NAMESPACE = "opsq"


def render_chart(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders for *values* (merged over values.yaml)."""
    chart = Chart.load(CHART_DIR)
    manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt and helpers render to text, not objects
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of *kind* (and *name*, when given)."""
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def watcher_role_rules(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The RBAC rules of the watcher's ClusterRole (or Role) for these values.

    *values* are chart values, e.g. ``{"cleanup": {"rules": [{"resource": "v1/pods"}],
    "events": True}}``. Raises LookupError when the chart renders no watcher role
    (no cleanup rules, or the watcher disabled).
    """
    for obj in render_chart(values):
        if obj["kind"] in ("ClusterRole", "Role") and obj["metadata"]["name"].endswith("-watcher"):
            rules: list[dict[str, Any]] = obj["rules"]
            return rules
    raise LookupError("the chart renders no watcher Role for these values")
