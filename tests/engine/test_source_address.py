"""``probes.source_address``: outgoing probe sockets bind to the chosen local address."""

from __future__ import annotations

import socket
import threading

import pytest

from opsq.engines.probe import run_probes
from tests.engine.conftest import Servers, target

SOURCE = "127.0.0.2"  # the whole 127/8 is loopback on Linux: a second local address


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_http_probes_leave_from_the_source_address(servers: Servers, transport: str) -> None:
    t = target(f"{servers.http}/peer", expect={"body_regex": r"^127\.0\.0\.2$"})
    [bound] = run_probes([t], transport=transport, source_address=SOURCE)  # type: ignore[arg-type]
    [default] = run_probes([t], transport=transport)  # type: ignore[arg-type]
    assert bound.up, bound.error
    assert (default.up, default.error_kind) == (False, "body")  # the control: 127.0.0.1


def test_tcp_probes_leave_from_the_source_address() -> None:
    peers: list[str] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def accept() -> None:
            conn, addr = listener.accept()
            peers.append(addr[0])
            conn.close()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        [result] = run_probes([target(f"tcp://127.0.0.1:{port}")], source_address=SOURCE)
        thread.join(5)
    assert result.up, result.error
    assert peers == [SOURCE]
