"""Logging for every opsq process: ``text`` for people, ``json`` for log pipelines.

Chosen by ``log_format`` / ``--log-format`` and ``log_level`` / ``--log-level`` (or
``OPSQ_LOG_FORMAT`` / ``OPSQ_LOG_LEVEL``, which is how ``opsq up``, the Helm chart and
docker-compose set them for Celery processes: see :mod:`tasks.observability`).

Secrets never reach a log line. Redaction happens in the formatter, after the message
is rendered, so it covers the message, the ``extra`` fields of JSON lines (secret-named
keys are masked, URLs lose their passwords) and exception tracebacks, whose messages
are where library errors tend to echo a connection URL.

One JSON object per line, with ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``,
then any ``extra`` fields, then ``exc`` when there is a traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from opsq.core.redact import redact, redact_text

_STD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
URL_LOGGERS = ("httpx", "httpcore")
"""Libraries that log every request's full URL at INFO/DEBUG. A Slack or webhook URL is
itself the secret (the token is its path), which no pattern can redact, so these are
held at WARNING whatever ``log_level`` says (``opsq alerts test`` printed the URL)."""
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """The usual one-line format, with tracebacks and stack info redacted too."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        extras = {k: v for k, v in vars(record).items() if k not in _STD}
        doc.update(redact(json.loads(json.dumps(extras, default=str))))
        if record.exc_info:
            doc["exc"] = redact_text(self.formatException(record.exc_info))
        if record.stack_info:
            doc["stack"] = redact_text(self.formatStack(record.stack_info))
        return json.dumps(doc, default=str)


class Redacted(logging.Formatter):
    """Wrap another formatter (e.g. Celery's) and redact everything it renders."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(self.inner.format(record))


def quiet_url_loggers() -> None:
    """Hold :data:`URL_LOGGERS` at WARNING."""
    for name in URL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def redact_handlers(logger: logging.Logger) -> None:
    """Make every handler of *logger* redact, keeping its own format."""
    quiet_url_loggers()
    for handler in logger.handlers:
        if not isinstance(handler.formatter, Redacted | JsonFormatter | TextFormatter):
            handler.setFormatter(Redacted(handler.formatter))


def make_handler(fmt: str = "text") -> logging.Handler:
    # No redacting filter as well: both formatters redact everything they render,
    # and a filter would run the same regex over every message a second time.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    return handler


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Replace the root logger's handlers with one opsq handler on stderr."""
    root = logging.getLogger()
    root.handlers[:] = [make_handler(fmt)]
    root.setLevel(level)
    quiet_url_loggers()
