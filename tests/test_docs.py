"""The README's references stay true to the code."""

from __future__ import annotations

from pathlib import Path

from opsq.core.metrics.catalog import markdown
from opsq.core.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_metrics_table_matches_the_code() -> None:
    """Regenerate with `python -m opsq.core.metrics.catalog` when a metric changes."""
    start = README.index("<!-- metrics-table:start -->") + len("<!-- metrics-table:start -->")
    end = README.index("<!-- metrics-table:end -->")
    assert README[start:end].strip() == markdown().strip()


def test_readme_documents_every_top_level_setting() -> None:
    missing = [k for k in Settings.model_fields if f"`{k}" not in README]
    assert missing == []
