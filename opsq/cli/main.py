"""Entry point of the ``opsq`` console script.

Subcommands are loaded lazily (``LazyGroup``) so ``opsq probe`` does not pay for
importing the kubernetes client, and one broken optional dependency cannot take
down every command. Any :class:`ConfigError` becomes a message on stderr and exit 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from opsq.core.errors import ConfigError, OpsqError
from opsq.core.version import version_line

# command name -> "module:attribute"
COMMANDS = {
    "config": "opsq.cli.config_cmd:config",
    "probe": "opsq.cli.probe_cmd:probe",
    "runs": "opsq.cli.probe_cmd:runs",
    "cleanup": "opsq.cli.cleanup_cmd:cleanup",
    "watch": "opsq.cli.cleanup_cmd:watch",
    "agent": "opsq.cli.logs_cmd:agent",
    "ship": "opsq.cli.logs_cmd:ship",
    "up": "opsq.cli.up_cmd:up",
    "status": "opsq.cli.monitor_cmd:status",
    "alerts": "opsq.cli.monitor_cmd:alerts",
    "web": "opsq.cli.web_cmd:web",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attr)
        return command


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_line())
        ctx.exit(0)


@click.group(cls=LazyGroup)
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
    help="Show version, git commit and build time.",
)  # fmt: skip
def cli() -> None:
    """opsq: probes, Kubernetes cleanup and log shipping on Celery and Redis."""


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="opsq", standalone_mode=False)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except OpsqError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
