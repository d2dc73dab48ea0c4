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
from typing import TYPE_CHECKING, Any

import click

from agents.agent import Agent
from agents.pods import node_name
from opsq.cli.options import common_options, settings_from
from opsq.core.errors import ConfigError
from opsq.core.logsetup import setup_logging
from opsq.core.observe import bind_or_fail
from opsq.core.settings import Settings, config_path

if TYPE_CHECKING:
    from agents.deadletter import DeadLetters

log = logging.getLogger("opsq.agent")


def _check_agent_settings(settings: Settings, config_file: str | None) -> None:
    source = str(config_path(config_file) or "configuration")
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
    if agent.kubernetes.metadata.enabled and node_name(agent) is None:
        raise ConfigError(
            f"{source}: logs.agent.kubernetes.metadata.enabled needs this node's name; set "
            "NODE_NAME from the downward API (fieldRef spec.nodeName) or "
            "logs.agent.kubernetes.node_name"
        )
    if agent.kubernetes.metadata.enabled:
        _check_credentials(source, agent.kubernetes.metadata.kubeconfig)


def _check_credentials(source: str, kubeconfig: str | None) -> None:
    """Pod metadata needs API credentials: say which setting, not a flag we lack."""
    # The kubernetes client costs ~15 MB: imported only when metadata is on.
    from opsq.engines.cleanup.kube import load_api_client  # noqa: PLC0415

    try:
        load_api_client(kubeconfig).close()
    except ConfigError as exc:
        raise ConfigError(
            f"{source}: logs.agent.kubernetes.metadata.kubeconfig: "
            f"{str(exc).split(' (fix:', 1)[0]} (fix: set it to a readable kubeconfig file, "
            "or leave it empty in a pod whose service account token is mounted, or turn "
            "logs.agent.kubernetes.metadata.enabled off)"
        ) from exc


@click.command()
@common_options
def agent(**opts: Any) -> None:
    """Tail logs.agent.paths into the log stream (at-least-once, checkpointed)."""
    settings = settings_from(**opts)
    _check_agent_settings(settings, opts.get("config_file"))
    setup_logging(settings.log_level, settings.log_format)
    engine = Agent(settings.logs, settings.broker_url)
    # A port in use (another agent, or the previous one still dying) is exit 2 with
    # the fix, not a traceback (issue 11 hostile check F5).
    server = bind_or_fail(
        settings.metrics.bind,
        settings.logs.agent.metrics_port,
        process="opsq agent",
        setting="logs.agent.metrics_port",
        ready_checks={"redis": engine.redis_reachable},
    ).start()
    log.info("metrics on %s:%d", settings.metrics.bind, server.port)

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "signal %d: stopping, draining for up to %.0fs",
            signum,
            settings.logs.agent.shutdown_grace,
        )
        engine.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        engine.run()
    finally:
        server.stop()
    log.info("agent stopped")


@click.group(invoke_without_command=True)
@common_options
@click.option(
    "--consumer",
    default=None,
    help="Consumer name (default: logs.shipper.consumer, "
    "else the host name). Keep it stable across restarts.",
)
@click.pass_context
def ship(ctx: click.Context, /, consumer: str | None, **opts: Any) -> None:
    """Ship log entries from the Redis stream to the configured sink (at least once).

    ``opsq ship replay --from-dead`` moves dead letters back into the stream.
    """
    if ctx.invoked_subcommand is None:
        _run_shipper(consumer, opts)


def _run_shipper(consumer: str | None, opts: dict[str, Any]) -> None:
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
    observe = bind_or_fail(
        settings.metrics.bind,
        conf.metrics_port,
        process="opsq ship",
        setting="logs.shipper.metrics_port",
        ready_checks=checks,
    ).start()
    try:
        shipper = Shipper(
            client,
            stream=stream,
            settings=conf,
            sink=sink,
            consumer=name,
            stop=stop,
            on_deadline=_exit_now,
        )
        shipper.run()
    finally:
        sink.close()
        observe.stop()
        client.close()
        probe.close()


def _exit_now() -> None:
    """The shutdown deadline passed with a call still blocked (a frozen Redis): exit.

    Unacknowledged entries stay pending in Redis for the next start or a peer.
    """
    log.warning(
        "shutdown grace over with a call still blocked; exiting now (what is not "
        "acknowledged stays pending)"
    )
    logging.shutdown()
    os._exit(0)


@ship.command()
@common_options
@click.option(
    "--from-dead",
    is_flag=True,
    help="Move entries from the dead-letter stream "
    "(<stream>:dead) back into the stream, oldest first.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="At most this many entries.",
)
def replay(from_dead: bool, count: int, **opts: Any) -> None:
    """Give dead letters another try: without --from-dead, only list them."""
    import redis  # noqa: PLC0415 - see _run_shipper

    from agents.deadletter import DeadLetters  # noqa: PLC0415
    from opsq.core.redis_errors import redis_errors  # noqa: PLC0415

    settings = settings_from(**opts)
    setup_logging(settings.log_level, settings.log_format)
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=10)
    dead = DeadLetters(client, settings.logs.stream)
    try:
        with redis_errors(f"replay dead letters of {settings.logs.stream}"):
            if not from_dead:
                _list_dead(dead, count)
                return
            moved = dead.replay(count)
            left = dead.length()
    finally:
        client.close()
    for item in moved:
        click.echo(f"{item.dead_id} -> {item.new_id}  ({item.reason})")
    click.echo(f"moved {len(moved)} dead letters back to {settings.logs.stream}; {left} left")


def _list_dead(dead: DeadLetters, count: int) -> None:
    from agents.deadletter import summary  # noqa: PLC0415 - see _run_shipper

    letters = dead.oldest(count)
    total = dead.length()
    for letter in letters:
        click.echo(f"{letter.id}  original {letter.original_id}  ({letter.reason})")
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(summary(letters).items())) or "none"
    click.echo(
        f"{total} dead letters in {dead.key} (first {len(letters)}: {kinds}); "
        "nothing moved: add --from-dead to move them back"
    )
