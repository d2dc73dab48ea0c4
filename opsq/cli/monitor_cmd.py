"""``opsq status`` and ``opsq alerts test``: target state and notifier checks.

``opsq status`` reads the state hashes the workers maintain (one pipelined round trip
for all sets) and prints every target's state, since when and the last reason.
``opsq alerts test NOTIFIER`` sends a test message through one notifier, in this
process (no worker needed), and prints the receiver's answer: exit 0 when it was
accepted, 1 when not (the reason on stderr), 2 for an unknown notifier.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import click
import redis

from opsq.cli.options import common_options, settings_from
from opsq.core.durations import format_duration
from opsq.core.errors import PermanentError, TemporaryError
from opsq.core.logsetup import setup_logging
from opsq.core.redact import redact_text
from opsq.engines.alerts import send_via, trial_message
from opsq.engines.monitor.state import TargetState
from opsq.engines.monitor.store import MonitorStore

OUTPUT = click.option("--output", type=click.Choice(["table", "json"]), default="table")
REASON_WIDTH = 50


@click.command()
@click.option("--set", "set_name", default=None, help="Only this probe set.")
@OUTPUT
@common_options
def status(set_name: str | None, output: str, **opts: Any) -> None:
    """The current state of every monitored target, since when, and the last reason."""
    settings = settings_from(**opts)
    client: redis.Redis[str] = redis.Redis.from_url(
        settings.broker_url, decode_responses=True, socket_timeout=10
    )
    try:
        store = MonitorStore(client, settings.alerts)
        names = [set_name] if set_name else store.sets()
        states = store.states(names)
    finally:
        client.close()
    # Target URLs and error details are as probed: passwords and tokens included.
    if output == "json":
        click.echo(redact_text(json.dumps(
            {name: [s.to_dict() for s in found] for name, found in states.items()}, indent=2
        )))  # fmt: skip
        return
    click.echo(redact_text(render_status(states, time.time())))
    if set_name and not states.get(set_name):
        click.echo(f"no state for set {set_name!r} yet (has a run of it completed?)", err=True)


def render_status(states: dict[str, list[TargetState]], now: float) -> str:
    header = ("SET", "NAME", "STATE", "SINCE", "FOR", "LAST RUN", "REASON", "LOCATIONS")
    rows = [header]
    for set_name, found in states.items():
        for s in found:
            since = "-" if not s.since else _clock(s.since)
            lasting = "-" if not s.since else format_duration(max(0.0, now - s.since))
            reason = s.reason + (f": {s.detail}" if s.detail else "")
            locations = " ".join(f"{loc}={r.get('verdict')}" for loc, r in sorted(
                s.locations.items()))  # fmt: skip
            rows.append((set_name, s.name, s.state.upper() if s.state != "up" else "up",
                         since, lasting, s.last_verdict, _short(reason), locations))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    counts: dict[str, int] = {}
    for found in states.values():
        for s in found:
            counts[s.state] = counts.get(s.state, 0) + 1
    lines.append("\n" + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or
                         "no monitored targets yet"))  # fmt: skip
    return "\n".join(lines)


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_WIDTH else text[: REASON_WIDTH - 1] + "…"


@click.group()
def alerts() -> None:
    """Check notifiers."""


@alerts.command(name="test")
@click.argument("notifier")
@common_options
def test_cmd(notifier: str, **opts: Any) -> None:
    """Send a test notification through NOTIFIER and print the receiver's answer."""
    settings = settings_from(**opts)
    setup_logging(settings.log_level, settings.log_format)
    try:
        delivery = send_via(settings.alerts, notifier, trial_message(notifier, time.time()))
    except (TemporaryError, PermanentError) as exc:
        click.echo(f"error: {exc}", err=True)
        raise click.exceptions.Exit(1) from exc
    click.echo(f"{notifier} ({delivery.kind}): {delivery.answer}")
