"""Library exceptions -> (error kind, short human reason), at the one place they enter.

httpx, httpcore, aiohttp, httpx-aiohttp and asyncio each wrap socket errors their own
way (httpx-aiohttp even maps every aiohttp connection error to ``ConnectTimeout``), so
the outermost type says little. We walk the whole ``__cause__``/``__context__`` chain
and decide by the most specific fact found, in a fixed priority: certificate
verification (kind ``cert``), name resolution, other TLS trouble, timeouts, connection
errors. The kinds are the stable set documented in :mod:`.result`.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Iterator, Sequence
from typing import TypeVar

import aiohttp
import httpx

from opsq.engines.probe.result import ErrorKind

log = logging.getLogger(__name__)
E = TypeVar("E", bound=BaseException)


class ProbeFailure(Exception):
    """Raised inside an attempt for failures the engine itself detects.

    ``retry_as`` is the ``retry_on`` entry that makes it retryable when that differs
    from its kind: a 503 is kind ``status`` but retried under ``retry_on: [5xx]``.
    """

    def __init__(self, kind: ErrorKind, message: str, *, retry_as: str | None = None) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.retry_as = retry_as or kind


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or during, without cycles."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(exc: BaseException, *, timeout: float) -> tuple[ErrorKind, str]:
    """The error kind and a one-line reason for an exception raised by an attempt."""
    if isinstance(exc, ProbeFailure):
        return exc.kind, exc.message
    links = list(chain(exc))
    try:
        for rule in (_tls_verify, _dns, _tls_other, _timeout, _connect):
            found = rule(links, timeout)
            if found is not None:
                return found
    except Exception:  # a verdict must come out whatever the library raised
        log.warning("could not classify %r; reporting kind 'other'", exc, exc_info=True)
    return "other", _short(exc)


def _first(links: list[BaseException], kind: type[E]) -> E | None:
    return next((link for link in links if isinstance(link, kind)), None)


def _detail(errors: Sequence[BaseException], attribute: str) -> str:
    """The first non-empty ``attribute`` among ``errors``, else the first one's text.

    aiohttp's ClientConnector{SSL,Certificate}Error subclass the ssl errors without
    their attributes; the ssl module's own error underneath has the precise reason.
    """
    found = next((v for e in errors if (v := getattr(e, attribute, None))), None)
    return str(found) if found else _short(errors[0])


def _tls_verify(links: list[BaseException], timeout: float) -> tuple[ErrorKind, str] | None:
    failures = [link for link in links if isinstance(link, ssl.SSLCertVerificationError)]
    if not failures:
        return None
    return "cert", f"certificate verify failed: {_detail(failures, 'verify_message')}"


def _dns(links: list[BaseException], timeout: float) -> tuple[ErrorKind, str] | None:
    gai = _first(links, socket.gaierror)
    if gai is not None:
        return "dns", f"cannot resolve host: {gai.strerror or gai}"
    wrapped = _first(links, aiohttp.ClientConnectorDNSError)
    return None if wrapped is None else ("dns", f"cannot resolve host {wrapped.host}")


def _tls_other(links: list[BaseException], timeout: float) -> tuple[ErrorKind, str] | None:
    errors = [link for link in links if isinstance(link, ssl.SSLError)]
    if not errors:
        return None
    return "tls", f"TLS error: {_detail(errors, 'reason')}"


def _timeout(links: list[BaseException], timeout: float) -> tuple[ErrorKind, str] | None:
    # httpx-aiohttp maps any aiohttp connection error to httpx.ConnectTimeout, so an
    # httpx timeout only counts when no aiohttp error sits underneath it.
    under_aiohttp = any(isinstance(link, aiohttp.ClientError) for link in links)
    for link in links:
        if isinstance(link, TimeoutError) or (
            isinstance(link, httpx.TimeoutException) and not under_aiohttp
        ):
            return "timeout", f"timeout after {timeout:.3g}s"
    return None


def _connect(links: list[BaseException], timeout: float) -> tuple[ErrorKind, str] | None:
    for link in links:
        if isinstance(link, ConnectionRefusedError) or (
            isinstance(link, OSError) and link.errno == errno.ECONNREFUSED
        ):
            return "connect", "connection refused"
    for link in links:
        if isinstance(link, OSError | aiohttp.ClientConnectionError | httpx.TransportError):
            return "connect", f"connection failed: {_short(link)}"
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0]
    return first if len(first) <= 200 else first[:197] + "..."
