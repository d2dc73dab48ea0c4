"""``opsq config check|show``: validate and print the effective configuration."""

from __future__ import annotations

import json
from typing import Any

import click
import yaml

from opsq.cli.options import common_options, settings_from
from opsq.core.redact import redact
from opsq.core.settings import default_settings


@click.group()
def config() -> None:
    """Validate or print the effective configuration."""


@config.command()
@common_options
def check(**opts: Any) -> None:
    """Validate the configuration; exit 0 when valid, 2 with the problem otherwise."""
    settings_from(**opts)
    click.echo("configuration OK")


@config.command()
@common_options
@click.option("--output", type=click.Choice(["yaml", "json"]), default="yaml")
@click.option("--defaults", is_flag=True, help="Print the built-in defaults alone.")
def show(output: str, defaults: bool, **opts: Any) -> None:
    """Print the effective configuration with secrets redacted."""
    settings = default_settings() if defaults else settings_from(**opts)
    data = redact(settings.model_dump(mode="json"))
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)
