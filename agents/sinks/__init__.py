"""Sinks the shipper writes to, one module each; :func:`make_sink` picks one from config."""

from __future__ import annotations

from pathlib import Path

from agents.sinks.base import Delivery, Outcome, Sink
from agents.sinks.elasticsearch import ElasticsearchSink
from agents.sinks.file import FileSink
from agents.sinks.loki import LokiSink
from agents.sinks.stdout import StdoutSink
from opsq.core.config.logs import SinkSettings
from opsq.core.errors import ConfigError

__all__ = ["Delivery", "Outcome", "Sink", "make_sink"]


def make_sink(settings: SinkSettings, *, consumer: str) -> Sink:
    """Build the configured sink; ``{consumer}`` in a file path becomes the consumer name."""
    if settings.type == "file":
        if settings.path is None:
            raise ConfigError(
                "logs.shipper.sink.path: the file sink needs a path "
                "(e.g. /var/log/opsq/shipped.jsonl); set logs.shipper.sink.path"
            )
        path = Path(str(settings.path).replace("{consumer}", consumer))
        return FileSink(path, max_bytes=settings.max_bytes, backups=settings.backups)
    if settings.type == "loki":
        return LokiSink(settings)
    if settings.type == "elasticsearch":
        return ElasticsearchSink(settings)
    return StdoutSink()
