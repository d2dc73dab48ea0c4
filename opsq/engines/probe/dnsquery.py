"""``dns://[server[:port]]/name?type=T`` probes: one real query, judged on its reply.

A lookup through the system resolver (``dns://name``, :mod:`.net`) answers "does this
name resolve here"; it cannot say which server answered, what rcode it gave, or
whether the answer is the right one. This module sends one query with dnspython to
the server the URL names (``dns:///name`` asks the first name server in
``/etc/resolv.conf``), over UDP with the standard fallback to TCP when the reply is
truncated, and judges the reply:

- the rcode must be one of ``expect.rcode`` (default NOERROR), else kind ``dns``;
- without an explicit ``expect.rcode``, a NOERROR reply must also hold at least one
  record of the asked type (NOERROR with no data is how a missing record looks);
- with ``expect.answer_regex``, some record of the asked type must match it (searched
  in the record's zone-file text: ``192.0.2.1``, ``10 mail.example.com.``), else kind
  ``body``.

A reply that does not come within the attempt's share of the deadline is a
``timeout``, like any other probe.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver

from opsq.core.config.probes import DnsQuery, Target
from opsq.engines.probe.errors import ProbeFailure
from opsq.engines.probe.phases import PhaseClock

_SHOWN_ANSWERS = 3


@functools.cache
def _system_server() -> str:
    try:
        servers = dns.resolver.Resolver().nameservers
    except dns.resolver.NoResolverConfiguration as exc:
        raise ProbeFailure("dns", "no name servers in /etc/resolv.conf") from exc
    return str(servers[0])


async def _server_address(query: DnsQuery, clock: PhaseClock) -> str:
    if query.server is None:
        return _system_server()
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in query.server else socket.AF_INET, query.server)
    except OSError:
        clock.start("dns")
        infos = await asyncio.get_running_loop().getaddrinfo(
            query.server, query.port, type=socket.SOCK_DGRAM
        )
        clock.stop("dns")
        return str(infos[0][4][0])
    return query.server


async def probe(
    target: Target, query: DnsQuery, clock: PhaseClock, budget: float, source: str | None
) -> None:
    """Send the query and judge the reply; raises ProbeFailure or a network error."""
    where = await _server_address(query, clock)
    message = dns.message.make_query(query.name, query.rdtype)
    clock.start("dns")
    try:
        reply, _ = await dns.asyncquery.udp_with_fallback(
            message, where, timeout=budget, port=query.port, source=source
        )
    except dns.exception.Timeout as exc:
        raise TimeoutError(f"no reply from {where}:{query.port}") from exc
    except dns.exception.DNSException as exc:
        raise ProbeFailure("dns", f"bad reply from {where}:{query.port}: {exc}") from exc
    clock.stop("dns")
    failure = judge(target, query, reply)
    if failure is not None:
        raise failure


def judge(target: Target, query: DnsQuery, reply: dns.message.Message) -> ProbeFailure | None:
    """The first failed expectation of a DNS reply (see the module docstring)."""
    expect = target.expect
    rcode = dns.rcode.to_text(reply.rcode())
    accepted = expect.rcode or ("NOERROR",)
    asked = f"{query.name} {query.rdtype}"
    if rcode not in accepted:
        return ProbeFailure("dns", f"rcode {rcode} for {asked}, expected {' or '.join(accepted)}")
    answers = _answers(reply, query)
    if expect.rcode is None and not answers:
        return ProbeFailure("dns", f"no {query.rdtype} records for {query.name} (NOERROR, empty)")
    pattern = expect.answer_regex
    if pattern is not None and not any(re.search(pattern, a) for a in answers):
        got = ", ".join(answers[:_SHOWN_ANSWERS]) or "no records"
        return ProbeFailure("body", f"no answer for {asked} matches {pattern!r} (got {got})")
    return None


def _answers(reply: dns.message.Message, query: DnsQuery) -> list[str]:
    """Zone-file text of every answer record of the asked type (CNAMEs followed)."""
    wanted = dns.rdatatype.from_text(query.rdtype)
    return [rd.to_text() for rrset in reply.answer if rrset.rdtype == wanted for rd in rrset]
