"""``opsq web``: the status page and JSON API as its own process (see :mod:`opsq.web`)."""

from __future__ import annotations

from typing import Any

import click

from opsq.cli.options import common_options, settings_from
from opsq.core.logsetup import setup_logging


@click.command()
@common_options
@click.option("--bind", default=None, help="Address to listen on (default: web.bind).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port (default: web.port)."
)
@click.option(
    "--public", is_flag=True, default=None, help="Serve read-only without a password (web.public)."
)
def web(
    config_file: str | None,
    redis_url: str | None,
    log_level: str | None,
    log_format: str | None,
    **flags: Any,
) -> None:
    """Serve the status page, /api/v1/ and badges from the history in Redis."""
    from opsq.web.server import serve  # noqa: PLC0415 - aiohttp and jinja2 only here

    settings = settings_from(config_file, redis_url, log_level, log_format)
    chosen = {k: v for k, v in flags.items() if v is not None}
    if chosen:
        settings = settings.model_copy(update={"web": settings.web.model_copy(update=chosen)})
    setup_logging(settings.log_level, settings.log_format)
    serve(settings)
