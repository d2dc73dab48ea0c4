"""TCP connect probes (``tcp://host:port``) and system-resolver lookups (``dns://name``).

Both use the event loop's resolver (``getaddrinfo`` in a thread, the system's view
of DNS with ``/etc/hosts`` and nsswitch, as the services being probed would see it)
and report the phases they have: dns, and connect for TCP. A TCP probe is up once the
handshake completes; we close at once without sending anything. Queries to a chosen
DNS server (``dns://server/name?type=T``) are :mod:`.dnsquery`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from urllib.parse import urlsplit

from opsq.core.config.probes import Target
from opsq.engines.probe.phases import PhaseClock


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve(host: str, port: int | None, clock: PhaseClock) -> list[str]:
    """Addresses for ``host``; raises ``socket.gaierror`` when it does not resolve."""
    if _is_ip(host):
        return [host]
    loop = asyncio.get_running_loop()
    clock.start("dns")
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    clock.stop("dns")
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def tcp_connect(target: Target, clock: PhaseClock, source: str | None = None) -> None:
    """Open and close a TCP connection to the target; raises OSError on failure."""
    parts = urlsplit(target.url)
    port = parts.port or 0
    addresses = await resolve(target.host, port, clock)
    clock.start("connect")
    local = (source, 0) if source is not None else None
    _, writer = await asyncio.open_connection(addresses[0], port, local_addr=local)
    clock.stop("connect")
    writer.close()
    # A reset while closing does not change the verdict: we connected.
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def dns_lookup(target: Target, clock: PhaseClock) -> None:
    """Resolve the target's host name; raises ``socket.gaierror`` when it does not."""
    await resolve(target.host, None, clock)
