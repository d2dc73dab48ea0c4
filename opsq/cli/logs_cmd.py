"""``opsq ship``: run the log shipper (stream -> sink) until SIGTERM.

A thin adapter: parse options, build the Redis client, the sink and the observe
server, then hand over to :class:`agents.shipper.Shipper`. SIGTERM and SIGINT only set
the stop flag; the shipper finishes its in-flight batch (sink write + XACK) and the
command exits 0.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import click
import redis

from agents.shipper import Shipper, default_consumer, group_exists
from agents.sinks import make_sink
from opsq.cli.options import common_options, settings_from
from opsq.core.logsetup import setup_logging
from opsq.core.observe import ObserveServer


@click.command()
@common_options
@click.option("--consumer", default=None, help="Consumer name (default: logs.shipper.consumer, "
              "else the host name). Keep it stable across restarts.")  # fmt: skip
def ship(consumer: str | None, **opts: Any) -> None:
    """Ship log entries from the Redis stream to the configured sink (at least once)."""
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
