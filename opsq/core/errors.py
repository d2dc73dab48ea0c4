"""The exception tree every opsq boundary translates into.

Retry decisions are types (as in kopf): a :class:`TemporaryError` is retried with
backoff by whoever owns the loop (a Celery adapter, the agent's sender, the informer);
a :class:`PermanentError` is reported and never retried. Library errors are mapped
where they enter, ``raise ... from exc``, so users never see a raw traceback from
redis-py, httpx or the kubernetes client.
"""

from __future__ import annotations


class OpsqError(Exception):
    """Base of everything opsq raises on purpose."""


class ConfigError(OpsqError):
    """Bad configuration or input file. The CLI prints it and exits 2.

    The message names the file, the field and the fix.
    """

    exit_code = 2


class TemporaryError(OpsqError):
    """A failure that may succeed later (timeout, 5xx, Redis unavailable).

    ``delay`` is a hint in seconds; ``None`` lets the caller's backoff decide.
    """

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(OpsqError):
    """A failure that retrying cannot fix (403, 4xx, bad input in a task)."""


class RedisUnavailable(TemporaryError):
    """Redis could not be reached or said "not now" (OOM, READONLY, LOADING...): retry."""


class RedisCommandError(PermanentError):
    """Redis refused a command for a reason retrying cannot fix: a bug or a config fix.

    ``WRONGTYPE``, ``NOSCRIPT`` after a reload, a syntax error, a wrong password. The
    policy lives in :mod:`opsq.core.redis_errors`; ``code`` is the reply's first word.
    """

    def __init__(self, message: str, *, code: str = "ERR") -> None:
        super().__init__(message)
        self.code = code
