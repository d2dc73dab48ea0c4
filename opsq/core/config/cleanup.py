"""Kubernetes cleanup rules (filled in by the cleanup feature)."""

from __future__ import annotations

from opsq.core.config.base import Section


class CleanupSettings(Section):
    """Placeholder until the cleanup feature lands."""

    dry_run: bool = True
