"""``opsq config check|show``: validate and print the effective configuration."""

from __future__ import annotations

import json
from typing import Any

import click
import yaml

from opsq.cli.options import common_options, settings_from
from opsq.core.redact import redact
from opsq.core.settings import Settings, default_settings
from opsq.engines.monitor.setrun import checked_targets, set_batches


@click.group()
def config() -> None:
    """Validate or print the effective configuration."""


@config.command()
@common_options
def check(**opts: Any) -> None:
    """Validate the configuration; exit 0 when valid, 2 with the problem otherwise."""
    check_set_files(settings_from(**opts))
    click.echo("configuration OK")


def check_set_files(settings: Settings) -> None:
    """Validate each probe set's targets file as a run would: its targets, their
    thresholds and expectations, and the notifiers they name (raises ConfigError).
    Without this, a bad file passed the check and beat then refused every run."""
    for name, probe_set in settings.probes.sets.items():
        if probe_set.file is not None:
            set_batches(probe_set, settings.probes.batch_size,
                        checked_targets(name, settings, lambda _: None))  # fmt: skip


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
