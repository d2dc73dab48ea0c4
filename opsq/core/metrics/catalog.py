"""Every opsq metric in one list, for the README's reference and its drift test.

Imports each area module (``probes``, ``pipeline``, ``cleanup``, ...) so their metric
objects register, then reads names, types, help and label names back from
prometheus_client. ``python -m opsq.core.metrics.catalog`` prints the Markdown table
that the README's "All metrics" list is made from.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import opsq.core.metrics as package

_SUFFIX = {"counter": "_total", "histogram": "_bucket/_sum/_count"}


@dataclass(frozen=True)
class MetricDoc:
    name: str
    type: str
    help: str
    labels: tuple[str, ...]

    @property
    def exposed(self) -> str:
        """The name as scraped (counters gain ``_total``)."""
        return self.name + "_total" if self.type == "counter" else self.name


def catalog() -> list[MetricDoc]:
    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "catalog":
            importlib.import_module(f"{package.__name__}.{module.name}")
    docs: dict[str, MetricDoc] = {}
    for collector in list(REGISTRY._collector_to_names):
        if not isinstance(collector, MetricWrapperBase):
            continue
        name = collector._name
        if name.startswith("opsq_"):
            docs[name] = MetricDoc(
                name,
                collector._type or "",
                collector._documentation or "",
                tuple(collector._labelnames),
            )
    return sorted(docs.values(), key=lambda d: d.name)


def markdown() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for doc in catalog():
        labels = ", ".join(doc.labels) or "-"
        rows.append(f"| `{doc.exposed}` | {doc.type} | {labels} | {doc.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown())  # noqa: T201
