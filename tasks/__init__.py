"""Celery worker adapters. ``celery -A tasks worker`` finds :data:`app` here.

Each task module is a thin adapter: parse arguments, call an engine, map the engine's
:class:`~opsq.core.errors.TemporaryError` / :class:`~opsq.core.errors.PermanentError`
to Celery retry or failure.
"""

from tasks.app import app

__all__ = ["app"]
