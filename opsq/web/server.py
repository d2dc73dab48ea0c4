"""The ``opsq web`` process: serve :func:`opsq.web.app.create_app` until SIGTERM.

aiohttp's runner handles SIGINT/SIGTERM: it stops accepting, lets requests in flight
finish (``SHUTDOWN_TIMEOUT_S``, well inside Kubernetes' 30 s grace period) and runs
the cleanup that closes the Redis client.
"""

from __future__ import annotations

import logging

from aiohttp import web

from opsq.core.errors import ConfigError
from opsq.core.settings import Settings
from opsq.web.app import create_app

log = logging.getLogger(__name__)
SHUTDOWN_TIMEOUT_S = 10.0


def check_access(settings: Settings) -> None:
    """A private page needs a password: refuse to start without one (exit 2)."""
    web_settings = settings.web
    if web_settings.public:
        return
    if web_settings.password is None or not web_settings.password.get_secret_value():
        raise ConfigError(
            "field web.password: required unless web.public is true (fix: set web.password "
            "or OPSQ_WEB__PASSWORD, or web.public: true for a read-only public page; "
            "`opsq up` generates one)"
        )


def serve(settings: Settings) -> None:
    check_access(settings)
    app = create_app(settings)
    mode = "public, read-only" if settings.web.public else f"private, user {settings.web.user!r}"
    log.info("opsq web on http://%s:%d/ (%s)", settings.web.bind, settings.web.port, mode)
    web.run_app(
        app,
        host=settings.web.bind,
        port=settings.web.port,
        print=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
    )
