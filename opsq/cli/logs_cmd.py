"""``opsq agent``: tail log files on this node into the Redis log stream.

A thin adapter: it loads and checks settings, starts the metrics/health server, wires
SIGTERM/SIGINT to a graceful stop (stop reading, drain within ``shutdown_grace``,
flush checkpoints, exit 0) and runs :class:`agents.agent.Agent` in the main thread.
"""

from __future__ import annotations

import logging
import re
import signal
from types import FrameType
from typing import Any

import click

from agents.agent import Agent
from opsq.cli.options import common_options, settings_from
from opsq.core.errors import ConfigError
from opsq.core.logsetup import setup_logging
from opsq.core.observe import ObserveServer
from opsq.core.settings import Settings, config_path

log = logging.getLogger("opsq.agent")


def _check_agent_settings(settings: Settings) -> None:
    source = str(config_path() or "configuration")
    agent = settings.logs.agent
    if not agent.paths:
        raise ConfigError(
            f"{source}: logs.agent.paths is empty; set at least one glob, "
            'e.g. paths: ["/var/log/app/*.log"]'
        )
    if agent.multiline is not None:
        try:
            re.compile(agent.multiline.start_pattern)
        except re.error as exc:
            raise ConfigError(
                f"{source}: logs.agent.multiline.start_pattern is not a valid regex ({exc}); "
                "fix the pattern"
            ) from exc


@click.command()
@common_options
def agent(**opts: Any) -> None:
    """Tail logs.agent.paths into the log stream (at-least-once, checkpointed)."""
    settings = settings_from(**opts)
    _check_agent_settings(settings)
    setup_logging(settings.log_level, settings.log_format)
    engine = Agent(settings.logs, settings.broker_url)
    server = ObserveServer(
        settings.metrics.bind,
        settings.logs.agent.metrics_port,
        ready_checks={"redis": engine.redis_reachable},
    ).start()
    log.info("metrics on %s:%d", settings.metrics.bind, server.port)

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping, draining for up to %.0fs", signum,
                 settings.logs.agent.shutdown_grace)  # fmt: skip
        engine.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        engine.run()
    finally:
        server.stop()
    log.info("agent stopped")
