"""Local notification receivers for alert tests: HTTP (webhook, Slack) and SMTP.

:class:`HttpReceiver` is a ``ThreadingHTTPServer`` on a free port of 127.0.0.1 that
records every POST (path, headers, parsed JSON body) and can be told to answer with
errors or to hold requests open, as a slow or broken receiver would. It acknowledges a
request by answering 2xx; ``accepted`` lists those, ``received`` every request seen.

:class:`SmtpReceiver` is aiosmtpd's ``Controller`` with STARTTLS (a trustme
certificate), AUTH required after TLS, and the received messages kept in memory.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme

from opsq.core.redis_server import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def key(self) -> str:
        return self.headers.get("idempotency-key", "")


@dataclass
class HttpReceiver:
    """Records POSTs; ``status`` and ``hold`` change how it answers."""

    status: int = 200
    hold: threading.Event | None = None
    """When set (an unset Event), requests wait for it before answering."""
    received: list[Received] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    held: list[socket.socket] = field(default_factory=list)
    """Connections of requests waiting for ``hold``."""

    def __post_init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> HttpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait_for(self, predicate: Callable[[HttpReceiver], bool], timeout: float = 30) -> bool:
        """Block until *predicate* holds (checked at each arrival) or *timeout*."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.arrived.wait(min(left, 0.5))
        return True

    def wait_held_gone(self, timeout: float = 10) -> bool:
        """Block until every held request's sender has closed its connection (True), or
        *timeout*. After a kill -9 the sender's FIN is sent as its process exits, but on
        a loaded machine the kernel may deliver it a little later: a held request
        released before it arrives would be answered to a process that never reads it
        (a duplicate notification that was never one, seen in issue 12)."""
        deadline = time.monotonic() + timeout
        while not all(_client_gone(conn) for conn in list(self.held)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _record(self, item: Received, accepted: bool) -> None:
        with self.arrived:
            (self.accepted if accepted else self.received).append(item)
            self.arrived.notify_all()

    def _withdraw(self, item: Received) -> None:
        with self.arrived:
            self.accepted[:] = [got for got in self.accepted if got is not item]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                item = Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                self.rfile.read(length))  # fmt: skip
                receiver._record(item, accepted=False)
                if receiver.hold is not None:
                    receiver.held.append(self.connection)
                    receiver.hold.wait(60)
                    # A sender that died while held: never acknowledged. Its FIN may lag
                    # its death on a loaded machine; a live sender never writes after
                    # its request, so the short wait only delays a held answer.
                    if _client_gone(self.connection, grace=0.3):
                        return
                code = receiver.status
                body = b'{"ok": true}' if code < 300 else b'{"error": "try later"}'
                # Recorded before the answer is written: a sender that returns on reading
                # the 2xx must find it in ``accepted`` (recording after the write raced it).
                if code < 300:
                    receiver._record(item, accepted=True)
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client went away (a killed worker): not acknowledged
                    if code < 300:
                        receiver._withdraw(item)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


def _client_gone(connection: socket.socket, grace: float = 0.0) -> bool:
    """True when the peer closed its side (a killed process's socket reads EOF), seen
    within *grace* seconds."""
    try:
        ready, _, _ = select.select([connection], [], [], grace)
    except (OSError, ValueError):  # closed here already
        return True
    if not ready:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class SmtpReceiver:
    """aiosmtpd with STARTTLS required before AUTH; ``messages`` are parsed emails."""

    def __init__(self, user: str = "opsq", password: str = "s3cret-pw") -> None:
        from aiosmtpd.controller import Controller  # noqa: PLC0415 - dev dependency
        from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: PLC0415

        self.ca = trustme.CA()
        self.user, self.password = user, password
        self.messages: list[Message] = []
        self.logins: list[str] = []
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                receiver.messages.append(message_from_bytes(envelope.content))
                return "250 Message accepted for delivery"

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                         auth_data: Any) -> AuthResult:  # fmt: skip
            ok = (isinstance(auth_data, LoginPassword)
                  and auth_data.login.decode() == receiver.user
                  and auth_data.password.decode() == receiver.password)  # fmt: skip
            if ok:
                receiver.logins.append(auth_data.login.decode())
            return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd replies 535

        self.controller = Controller(
            Handler(), hostname="127.0.0.1", port=free_port(), tls_context=context,
            require_starttls=True, authenticator=authenticate, auth_require_tls=True,
        )  # fmt: skip

    def start(self) -> SmtpReceiver:
        self.controller.start()
        self.port = int(self.controller.port)
        return self

    def ca_file(self, directory: Any) -> str:
        path = directory / "smtp-ca.pem"
        self.ca.cert_pem.write_to_path(str(path))
        return str(path)

    def stop(self) -> None:
        self.controller.stop()
