"""``opsq agent`` and ``opsq ship``: the two ends of log shipping, as thin CLI adapters.

``opsq agent`` tails log files on this node into the Redis log stream: it loads and
checks settings, starts the metrics/health server, wires SIGTERM/SIGINT to a graceful
stop (stop reading, drain within ``shutdown_grace``, flush checkpoints, exit 0) and runs
:class:`agents.agent.Agent` in the main thread.

``opsq ship`` runs the log shipper (stream -> sink) until SIGTERM: it builds the Redis
client, the sink and the observe server, then hands over to
:class:`agents.shipper.Shipper`. SIGTERM and SIGINT only set the stop flag; the shipper
finishes its in-flight batch (sink write + XACK) and the command exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
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
    ckpt = agent.checkpoint_dir
    try:
        ckpt.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{source}: logs.agent.checkpoint_dir {ckpt} cannot be created ({exc}); "
            "point it at a writable directory"
        ) from exc
    if not os.access(ckpt, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{source}: logs.agent.checkpoint_dir {ckpt} is not writable; "
            "point it at a writable directory"
        )


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


@click.command()
@common_options
@click.option("--consumer", default=None, help="Consumer name (default: logs.shipper.consumer, "
              "else the host name). Keep it stable across restarts.")  # fmt: skip
def ship(consumer: str | None, **opts: Any) -> None:
    """Ship log entries from the Redis stream to the configured sink (at least once)."""
    # Imported here, not at the top: `opsq agent` loads this module too, and redis-py
    # plus the HTTP sinks would add ~15 MB to the agent's 60 MB RSS budget.
    import redis  # noqa: PLC0415

    from agents.shipper import Shipper, default_consumer, group_exists  # noqa: PLC0415
    from agents.sinks import make_sink  # noqa: PLC0415

    settings = settings_from(**opts)
    setup_logging(settings.log_level, settings.log_format)
    conf = settings.logs.shipper
    name = consumer or conf.consumer or default_consumer()
    stream = settings.logs.stream
    # The socket timeout must outlast XREADGROUP's BLOCK, or every idle read times out.
    client = redis.Redis.from_url(
        settings.broker_url, socket_timeout=conf.block + 10, socket_connect_timeout=5
    )
    probe = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
    sink = make_sink(conf.sink, consumer=name)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    checks = {"redis": probe.ping, "group": lambda: group_exists(probe, stream, conf.group)}
    observe = ObserveServer(settings.metrics.bind, conf.metrics_port, ready_checks=checks).start()
    try:
        Shipper(client, stream=stream, settings=conf, sink=sink, consumer=name, stop=stop).run()
    finally:
        sink.close()
        observe.stop()
        client.close()
        probe.close()
