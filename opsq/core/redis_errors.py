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
import sys
from collections.abc import Callable, Collection, Iterator
from types import ModuleType, TracebackType
from typing import Any, Literal, TypeVar, cast

from opsq.core.errors import OpsqError, RedisCommandError, RedisUnavailable
from opsq.core.redact import redact_text

Verdict = Literal["temporary", "permanent"]
F = TypeVar("F", bound=Callable[..., Any])

TEMPORARY_CODES = frozenset(
    {"OOM", "READONLY", "LOADING", "TRYAGAIN", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS"}
)
"""Error-reply codes (the reply's first word) that mean "not now" rather than "wrong"."""


def _rex() -> ModuleType | None:
    """redis-py's exceptions module if redis-py is loaded, else None.

    Looked up, never imported: an exception from redis-py cannot exist in a process that
    has not loaded it, and the log agent keeps redis-py (~10 MB of RSS) out on purpose.
    """
    return sys.modules.get("redis.exceptions")


@functools.cache
def _classes(rex: ModuleType) -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """(temporary, permanent) classes. redis-py maps some codes to classes and strips the
    code from the message (redis-py 5-7 keep no status_code), so those go by class."""
    temporary = (
        rex.TimeoutError,
        rex.BusyLoadingError,  # LOADING
        rex.ReadOnlyError,  # READONLY
        rex.TryAgainError,  # TRYAGAIN
        rex.ClusterDownError,  # CLUSTERDOWN, MASTERDOWN
        rex.InvalidResponse,  # garbage on the socket: retried on a new connection
        rex.WatchError,  # an optimistic transaction lost a race: run it again
        getattr(rex, "OutOfMemoryError", rex.TimeoutError),  # OOM (redis-py >= 4.4)
    )
    permanent = (
        rex.AuthenticationError,
        getattr(rex, "AuthorizationError", rex.AuthenticationError),
        getattr(rex, "MaxConnectionsError", rex.AuthenticationError),  # redis-py >= 6
    )
    return temporary, permanent


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
    rex = _rex()
    if rex is not None and isinstance(exc, rex.AuthenticationError):
        return "WRONGPASS"
    if rex is not None and isinstance(exc, rex.NoScriptError):
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
    code = _first_word(reply)
    detail = redact_text(reply.lstrip("-"))
    return _error("reply" if code in TEMPORARY_CODES else "permanent", code, detail, what, where)


@contextlib.contextmanager
def ignore_reply(*codes: str) -> Iterator[None]:
    """Swallow an expected error reply (``ignore_reply("BUSYGROUP")``); re-raise others."""
    import redis.exceptions as rex  # noqa: PLC0415 -- only redis-py callers get here

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
    kombu = sys.modules.get("kombu.exceptions")
    if kombu is not None and isinstance(exc, kombu.OperationalError):
        cause = exc.__cause__ or exc.__context__
        return (classify(cause, temporary) if cause is not None else None) or "temporary"
    rex = _rex()
    if rex is None or not isinstance(exc, rex.RedisError):
        return None
    return "temporary" if _is_temporary(rex, exc, temporary) else "permanent"


def _is_temporary(rex: ModuleType, exc: BaseException, temporary: Collection[str]) -> bool:
    temporary_classes, permanent_classes = _classes(rex)
    if isinstance(exc, permanent_classes) or "Too many connections" in str(exc):
        return False
    if isinstance(exc, temporary_classes):
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
    is_reply = _is_reply(exc)
    if verdict == "temporary" and is_reply:
        verdict_kind: _Kind = "reply"
    else:
        verdict_kind = "connection" if verdict == "temporary" else "permanent"
    return _error(verdict_kind, reply_code(exc), redact_text(_detail(exc, is_reply)), what, where)


_Kind = Literal["connection", "reply", "permanent"]


def _error(kind: _Kind, code: str, detail: str, what: str, where: str) -> OpsqError:
    at = f" at {redact_text(where)}" if where else ""
    if kind == "connection":
        return RedisUnavailable(f"{what}: cannot reach Redis{at}: {detail}")
    if kind == "reply":
        return RedisUnavailable(f"{what}: Redis{at} cannot serve it now: {detail}")
    hint = _HINTS.get(code, "a bug in opsq or a Redis it does not support; not retried")
    return RedisCommandError(f"{what}: Redis{at} refused the command: {detail} ({hint})", code=code)


def _is_reply(exc: BaseException) -> bool:
    """An error reply from the server (as opposed to a failed connection)."""
    rex = _rex()
    return rex is not None and isinstance(exc, rex.ResponseError | rex.BusyLoadingError)


def _detail(exc: BaseException, is_reply: bool) -> str:
    """The reply as the server sent it: redis-py strips the code of some replies."""
    text = str(exc) or type(exc).__name__
    if is_reply:
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
