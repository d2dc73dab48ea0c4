"""The one Redis error policy: which failures are worth retrying, and which are bugs.

Every place opsq talks to Redis (runs, rate limiters, tasks, producers, the shipper,
the log sender, the watcher, the supervisor) translates redis-py's exceptions here, at
the boundary, so a fault gets the same treatment everywhere:

- **Temporary** -> :class:`~opsq.core.errors.RedisUnavailable` (retried with backoff by
  whoever owns the loop): the connection failed or timed out, or the server said "not
  now": ``OOM`` (``maxmemory`` under ``noeviction``), ``READONLY`` (a replica after a
  failover), ``LOADING`` (restarting with its data), ``TRYAGAIN``, ``BUSY`` (a long
  script), ``MASTERDOWN``, ``CLUSTERDOWN``, ``NOREPLICAS``, ``max number of clients``.
- **Permanent** -> :class:`~opsq.core.errors.RedisCommandError` (never retried): the
  command itself is wrong, so retrying for an hour only hides the bug. ``WRONGTYPE``
  (a key of another type under our prefix), ``NOSCRIPT`` that survived redis-py's
  reload, ``ERR syntax``/``unknown command``/``wrong number of arguments``, a wrong
  password (``WRONGPASS``/``NOAUTH``/``NOPERM``: a config fix, not a wait), and a
  client pool too small for its callers (redis-py's ``Too many connections``: a sizing
  bug, and treating it as an outage is how a rate limiter ended up failing open).

Anything not listed is permanent: an unknown reply is more likely a bug than an outage,
and a permanent error is loud where a temporary one is retried quietly.

Use :func:`redis_errors` around the calls (a context manager, or a decorator for sync
and ``async def`` functions). A caller that expects a particular reply (``BUSYGROUP``
when creating a group that exists) wraps the call in :func:`ignore_reply` inside the
block; a caller for which a reply means "retry" in its own context (``NOGROUP`` for a
shipper whose Redis lost its group) passes it in ``temporary=``. Clients that speak
RESP themselves (the log agent) turn an error reply into the same exceptions with
:func:`reply_error`. ``tests/core/test_one_policy.py`` fails if a backoff formula or
a Redis error classification appears anywhere else.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
from collections.abc import Callable, Collection, Iterator
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

import redis.exceptions as rex
from kombu.exceptions import OperationalError

from opsq.core.errors import OpsqError, RedisCommandError, RedisUnavailable
from opsq.core.redact import redact_text

Verdict = Literal["temporary", "permanent"]
F = TypeVar("F", bound=Callable[..., Any])

TEMPORARY_CODES = frozenset(
    {"OOM", "READONLY", "LOADING", "TRYAGAIN", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS"}
)
"""Error-reply codes (the reply's first word) that mean "not now" rather than "wrong"."""

# redis-py maps some codes to classes and strips the code from the message (redis-py
# 5-7 keep no status_code), so those are recognised by class.
_TEMPORARY_CLASSES: tuple[type[Exception], ...] = (
    rex.TimeoutError,
    rex.BusyLoadingError,  # LOADING
    rex.ReadOnlyError,  # READONLY
    rex.TryAgainError,  # TRYAGAIN
    rex.ClusterDownError,  # CLUSTERDOWN, MASTERDOWN
    rex.InvalidResponse,  # garbage on the socket: the connection is dropped, retry on a new one
    rex.WatchError,  # optimistic transaction lost a race: run it again
    getattr(rex, "OutOfMemoryError", rex.ResponseError),  # OOM (redis-py >= 4.4)
)
_PERMANENT_CONNECTION_CLASSES: tuple[type[Exception], ...] = (
    rex.AuthenticationError,
    getattr(rex, "AuthorizationError", rex.AuthenticationError),
    getattr(rex, "MaxConnectionsError", rex.AuthenticationError),
)
_PIPELINE = re.compile(r"of pipeline caused error: \(?['\"]?")
_HINTS = {
    "WRONGTYPE": "a key under opsq's prefix holds another type; another program or an "
    "older opsq writes there (use another database or key prefix)",
    "NOSCRIPT": "the script was not loaded even after a reload; a bug, please report it",
    "WRONGPASS": "check the user and password in redis_url",
    "NOAUTH": "set the password in redis_url (redis://:PASSWORD@host:6379/0)",
    "NOPERM": "the Redis ACL user lacks a permission opsq needs",
}


def reply_code(exc: BaseException) -> str:
    """The reply's code (``WRONGTYPE``, ``OOM``), or ``ERR`` when there is none."""
    status = getattr(exc, "status_code", None)  # redis-py >= 8 keeps the stripped code
    if isinstance(status, str) and status:
        return status
    if isinstance(exc, rex.AuthenticationError):
        return "WRONGPASS"
    if isinstance(exc, rex.NoScriptError):
        return "NOSCRIPT"
    return _first_word(_reply_text(str(exc)))


def _reply_text(text: str) -> str:
    """The reply inside redis-py's pipeline wrapping, which differs sync and async:
    ``Command # 1 (...) of pipeline caused error: WRONGTYPE ...`` and ``...: ('WRONGTYPE ...',)``.
    """
    marker = _PIPELINE.search(text)
    return text[marker.end() :] if marker else text


def _first_word(reply: str) -> str:
    first = reply.lstrip("-").split(" ", 1)[0]
    return first if first.isupper() and first.isalpha() else "ERR"


def reply_error(reply: str, what: str, where: str = "") -> OpsqError:
    """The exception for a raw RESP error reply (``"WRONGTYPE Operation ..."``)."""
    return cast(OpsqError, translate(rex.ResponseError(reply), what, where=where))


@contextlib.contextmanager
def ignore_reply(*codes: str) -> Iterator[None]:
    """Swallow an expected error reply (``ignore_reply("BUSYGROUP")``); re-raise others."""
    try:
        yield
    except rex.ResponseError as exc:
        if reply_code(exc) not in codes:
            raise


def reply_is_temporary(reply: str, temporary: Collection[str] = ()) -> bool:
    """For raw RESP error replies (``"OOM command not allowed ..."``): retry or not."""
    code = _first_word(reply)
    return code in TEMPORARY_CODES or code in temporary


def classify(exc: BaseException, temporary: Collection[str] = ()) -> Verdict | None:
    """``"temporary"``, ``"permanent"``, or None when *exc* is not a Redis error.

    A kombu ``OperationalError`` (the broker connection behind ``send_task``) is
    judged by the Redis error that caused it, else as a connection failure.
    """
    if isinstance(exc, OperationalError):
        cause = exc.__cause__ or exc.__context__
        return (classify(cause, temporary) if cause is not None else None) or "temporary"
    if not isinstance(exc, rex.RedisError):
        return None
    return "temporary" if _is_temporary(exc, temporary) else "permanent"


def _is_temporary(exc: rex.RedisError, temporary: Collection[str]) -> bool:
    if isinstance(exc, _PERMANENT_CONNECTION_CLASSES) or "Too many connections" in str(exc):
        return False
    if isinstance(exc, _TEMPORARY_CLASSES):
        return True
    if isinstance(exc, rex.ResponseError):
        code = reply_code(exc)
        return code in TEMPORARY_CODES or code in temporary
    return isinstance(exc, rex.ConnectionError)


def translate(
    exc: BaseException, what: str, temporary: Collection[str] = (), where: str = ""
) -> OpsqError | None:
    """The opsq exception for *exc* (to ``raise ... from exc``), or None to leave it alone.

    ``where`` (a redacted URL) names the server in the message.
    """
    verdict = classify(exc, temporary)
    if verdict is None:
        return None
    at = f" at {redact_text(where)}" if where else ""
    detail = redact_text(_detail(exc))
    if verdict == "temporary":
        if isinstance(exc, rex.ResponseError):
            return RedisUnavailable(f"{what}: Redis{at} cannot serve it now: {detail}")
        return RedisUnavailable(f"{what}: cannot reach Redis{at}: {detail}")
    code = reply_code(exc)
    hint = _HINTS.get(code, "a bug in opsq or a Redis it does not support; not retried")
    return RedisCommandError(f"{what}: Redis{at} refused the command: {detail} ({hint})", code=code)


def _detail(exc: BaseException) -> str:
    """The reply as the server sent it: redis-py strips the code of some replies."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, rex.ResponseError | rex.BusyLoadingError):
        code = reply_code(exc)
        if not _reply_text(text).startswith(code):
            text = f"{code} {text}"
    return text


class redis_errors:  # lower case: used like a function, `with redis_errors("...")`
    """Translate Redis errors raised inside the block (or the decorated function).

    ``what`` says what was being done ("store results of run 3f2a"); it starts the
    message. ``where`` names the server (redacted). ``temporary`` adds reply codes that
    mean "retry" for this caller only.
    """

    def __init__(self, what: str, *, where: str = "", temporary: Collection[str] = ()) -> None:
        self.what = what
        self.where = where
        self.temporary = frozenset(temporary)

    def __enter__(self) -> redis_errors:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc is None:
            return False
        translated = translate(exc, self.what, self.temporary, self.where)
        if translated is None:
            return False
        raise translated from exc

    def __call__(self, func: F) -> F:
        """Decorate a function; ``async def`` functions are translated on await."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def awaiting(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await func(*args, **kwargs)

            return cast(F, awaiting)

        @functools.wraps(func)
        def calling(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return cast(F, calling)
