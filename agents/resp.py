"""A minimal pipelined Redis (RESP2) client: just what the agent sends.

Why not redis-py: the agent runs on every node and has a 60 MB RSS budget; importing
redis-py 8 (its command mixins, asyncio, observability modules) costs ~10 MB of that
before a single line is read, and its per-command packing is overhead we measured in
the benchmark. The agent needs a handful of commands (AUTH, SELECT, PING, MULTI, XADD,
XTRIM, EXEC), sent pipelined, with replies read in order.

Errors: a closed socket, a timeout or an unparsable reply is
:class:`~opsq.core.errors.RedisUnavailable` (the connection is dropped and the sender
backs off). An error *reply* is judged by the one Redis error policy
(:func:`opsq.core.redis_errors.reply_error`): ``OOM``, ``LOADING``, ``READONLY`` ... are
temporary, ``WRONGTYPE``, ``WRONGPASS``, a bad ``SELECT`` are permanent (the policy
module imports neither redis-py nor kombu, so it costs the agent's RSS nothing).

:meth:`RespClient.interrupt` shuts the socket down from another thread: a sender
blocked on a frozen Redis wakes at once, so shutdown stays within its grace period.

Supports ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) and
``unix:///path?db=N``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from opsq.core.errors import ConfigError, OpsqError, RedisUnavailable
from opsq.core.redis_errors import reply_error

Command = list[bytes]


class ErrorReply:
    """Redis answered ``-ERR ...`` (or OOM, LOADING, ...) to one command.

    A value, not an exception: inside an EXEC reply it sits among the other replies.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"ErrorReply({self.text!r})"


Reply = bytes | int | list["Reply"] | None | ErrorReply


def encode(command: Command) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        parts.append(b"$%d\r\n" % len(arg))
        parts.append(arg)
        parts.append(b"\r\n")
    return b"".join(parts)


class RespClient:
    def __init__(self, url: str, *, timeout: float = 10.0, connect_timeout: float = 3.0) -> None:
        self.url = url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None

    # --- connection -------------------------------------------------------------------
    def _connect(self) -> BinaryIO:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            sock.connect(parts.path)
        elif parts.scheme in ("redis", "rediss"):
            host = parts.hostname or "127.0.0.1"
            sock = socket.create_connection((host, parts.port or 6379), self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if parts.scheme == "rediss":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        else:
            raise ConfigError(f"redis_url: unsupported scheme {parts.scheme!r}; use redis://")
        sock.settimeout(self.timeout)
        self._sock = sock
        self._file = sock.makefile("rb")
        try:
            self._handshake(parts.username, parts.password, _db(parts.path, parts.query))
        except BaseException:
            self.close()  # never keep a connection that is not authenticated / selected
            raise
        return self._file

    def _handshake(self, user: str | None, password: str | None, db: int) -> None:
        setup: list[Command] = []
        if password:
            auth = [b"AUTH", unquote(password).encode()]
            setup.append(auth if not user else [b"AUTH", unquote(user).encode(), auth[1]])
        if db:
            setup.append([b"SELECT", str(db).encode()])
        if setup:
            error = first_error(self._roundtrip(setup))
            if error is not None:
                raise reply_error(error.text, "AUTH/SELECT", _safe(self.url))

    def close(self) -> None:
        # Close the makefile() reader too: a socket's descriptor stays open while a file
        # made from it lives, and a traceback holding the reader would keep it alive.
        sock, reader = self._sock, self._file
        self._sock, self._file = None, None
        if reader is not None:
            reader.close()
        if sock is not None:
            sock.close()

    def interrupt(self) -> None:
        """Wake a thread blocked on this connection (it then sees RedisUnavailable)."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # --- commands ---------------------------------------------------------------------
    def execute(self, commands: list[Command], what: str = "pipeline") -> list[Reply]:
        """Send *commands* pipelined; return replies in order.

        Raises RedisUnavailable (retry) or RedisCommandError (an error reply retrying
        cannot fix). Error replies nested in an EXEC reply count too.
        """
        try:
            if self._file is None:
                self._connect()
            replies = self._roundtrip(commands)
        except (OSError, EOFError, ValueError) as exc:
            # ValueError: a length or integer that does not parse (a peer that is not
            # Redis, or a corrupted stream). Either way the connection is unusable, and
            # letting it escape would kill the sender thread instead of backing off.
            self.close()
            raise RedisUnavailable(f"Redis at {_safe(self.url)} unreachable: {exc}") from exc
        error = first_error(replies)
        if error is not None:
            raise reply_error(error.text, what, _safe(self.url))
        return replies

    def _roundtrip(self, commands: list[Command]) -> list[Reply]:
        if self._sock is None or self._file is None:
            raise EOFError("not connected")
        for command in commands:  # one command at a time: no copy of the whole pipeline
            self._sock.sendall(encode(command))
        return [_read(self._file) for _ in commands]  # every reply: the stream stays in sync

    def ping(self) -> bool:
        try:
            return self.execute([[b"PING"]], "PING") == [b"PONG"]
        except OpsqError:  # unavailable, or refused (a wrong password): not ready either way
            return False


def _read(f: BinaryIO) -> Reply:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise EOFError("connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        return ErrorReply(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = f.read(size + 2)
        if len(data) != size + 2:
            raise EOFError("connection closed mid-reply")
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read(f) for _ in range(count)]
    raise EOFError(f"unexpected RESP reply {line[:20]!r}")


def first_error(replies: list[Reply]) -> ErrorReply | None:
    """The first error reply, looking inside nested replies (EXEC) too."""
    for reply in replies:
        if isinstance(reply, ErrorReply):
            return reply
        if isinstance(reply, list):
            nested = first_error(reply)
            if nested is not None:
                return nested
    return None


def _db(path: str, query: str) -> int:
    if path.strip("/").isdigit():
        return int(path.strip("/"))
    values = parse_qs(query).get("db")
    return int(values[0]) if values and values[0].isdigit() else 0


def _safe(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.hostname else parts.scheme
