"""Options every command shares (config file, Redis URL, logging)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

from opsq.core.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def common_options(func: F) -> F:
    """``--config``, ``--redis-url``, ``--log-level``, ``--log-format``."""
    func = click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), default=None,
        help="YAML config file (default: $OPSQ_CONFIG).",
    )(func)  # fmt: skip
    func = click.option("--redis-url", default=None, help="Redis URL (default: $OPSQ_REDIS_URL).")(
        func
    )
    func = click.option(
        "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default=None
    )(func)
    return click.option("--log-format", type=click.Choice(["text", "json"]), default=None)(func)


def settings_from(
    config_file: str | None,
    redis_url: str | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    **overrides: Any,
) -> Settings:
    """Effective settings with CLI flags taking precedence over everything else."""
    return load_settings(
        config_file,
        redis_url=redis_url,
        log_level=log_level,
        log_format=log_format,
        **overrides,
    )


def positive_seconds(
    _ctx: click.Context, _param: click.Parameter, value: float | None
) -> float | None:
    """Callback for a seconds option: positive and finite (``nan`` never times out,
    ``-1`` gave up at once), else a usage error, exit 2."""
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise click.BadParameter(f"{value:g} is not a positive number of seconds (e.g. 600)")
    return value
