"""dns:// query probes against a real DNS server (dnsmasq) that the test starts."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import pytest

from opsq.core.config.probes import Target
from opsq.engines.probe import ProbeResult, run_probes
from tests.engine.conftest import target
from tests.support.tools import require_tool

ZONE = "opsq.test"


@dataclass
class DnsServer:
    port: int
    log: Path

    def url(self, name: str, rdtype: str = "A") -> str:
        return f"dns://127.0.0.1:{self.port}/{name}?type={rdtype}"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_answering(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    query = dns.message.make_query(f"web.{ZONE}", "A")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {log.read_text()}")
        try:
            dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
            return
        except (dns.exception.Timeout, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"dnsmasq did not answer: {log.read_text()}")


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    """dnsmasq on 127.0.0.1 with a small local zone; ``*.slow.test`` is forwarded to a
    UDP port that never answers (a server that times out)."""
    dnsmasq = require_tool("dnsmasq")
    log = tmp_path_factory.mktemp("dnsmasq") / "dnsmasq.log"
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blackhole.bind(("127.0.0.1", 0))
    port = _free_udp_port()
    argv = [
        dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--no-poll", "--pid-file=", "--bind-interfaces", "--listen-address=127.0.0.1",
        f"--port={port}", "--log-queries", "--log-facility=-", f"--local=/{ZONE}/",
        f"--host-record=web.{ZONE},192.0.2.10", f"--cname=alias.{ZONE},web.{ZONE}",
        f"--mx-host={ZONE},mail.{ZONE},10", f"--txt-record={ZONE},v=spf1 -all",
        f"--srv-host=_http._tcp.{ZONE},web.{ZONE},80",
        f"--server=/slow.test/127.0.0.1#{blackhole.getsockname()[1]}",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_answering(port, proc, log)
        yield DnsServer(port, log)
    finally:
        proc.terminate()
        proc.wait(10)
        blackhole.close()


def _probe(t: Target) -> ProbeResult:
    [result] = run_probes([t])
    return result


def test_a_record_with_the_expected_answer_is_up(dns_server: DnsServer) -> None:
    t = target(dns_server.url(f"web.{ZONE}"), expect={"answer_regex": r"^192\.0\.2\.10$"})
    result = _probe(t)
    assert (result.up, result.error_kind) == (True, None), result.error
    assert "dns" in result.phases
    assert f"web.{ZONE}" in dns_server.log.read_text()  # the query reached the server


@pytest.mark.parametrize(
    ("name", "rdtype", "answer"),
    [
        (f"alias.{ZONE}", "CNAME", rf"^web\.{ZONE}\.$"),
        (f"alias.{ZONE}", "A", r"^192\.0\.2\.10$"),  # the CNAME is followed
        (ZONE, "MX", rf"^10 mail\.{ZONE}\.$"),
        (ZONE, "TXT", r"v=spf1 -all"),
        (f"_http._tcp.{ZONE}", "SRV", rf" 80 web\.{ZONE}\.$"),
    ],
)
def test_record_types_are_queried_and_matched(
    dns_server: DnsServer, name: str, rdtype: str, answer: str
) -> None:
    result = _probe(target(dns_server.url(name, rdtype), expect={"answer_regex": answer}))
    assert result.up, result.error


def test_nxdomain_is_down_unless_expected(dns_server: DnsServer) -> None:
    url = dns_server.url(f"missing.{ZONE}")
    down = _probe(target(url, retries=1, retry_on=["dns"]))
    assert (down.up, down.error_kind, down.attempts) == (False, "dns", 2)
    assert down.error == f"rcode NXDOMAIN for missing.{ZONE} A, expected NOERROR"
    assert _probe(target(url, expect={"rcode": ["nxdomain"]})).up


def test_a_wrong_answer_is_a_body_failure_naming_what_came(dns_server: DnsServer) -> None:
    t = target(dns_server.url(f"web.{ZONE}"), expect={"answer_regex": r"^192\.0\.2\.99$"})
    result = _probe(t)
    assert (result.up, result.error_kind) == (False, "body")
    assert "got 192.0.2.10" in (result.error or "")


def test_no_records_of_the_asked_type_is_down(dns_server: DnsServer) -> None:
    result = _probe(target(dns_server.url(f"web.{ZONE}", "AAAA")))
    assert (result.up, result.error_kind) == (False, "dns")
    assert result.error == f"no AAAA records for web.{ZONE} (NOERROR, empty)"


def test_a_server_that_never_answers_times_out(dns_server: DnsServer) -> None:
    result = _probe(target(dns_server.url("x.slow.test"), timeout=1))
    assert (result.up, result.error_kind) == (False, "timeout")


def test_nothing_listening_is_not_up(closed_port: int) -> None:
    """Issue 9: dns://127.0.0.1:PORT/name once reported up without sending a query."""
    result = _probe(target(f"dns://127.0.0.1:{closed_port}/example.com", timeout=1))
    assert not result.up
    assert result.error_kind in ("connect", "timeout")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("dns://192.0.2.1", "names the address 192.0.2.1 but no name to look up"),
        ("dns://127.0.0.1:5353", "write dns://127.0.0.1:5353/example.com"),
        ("dns:///192.0.2.1", "asks to look up the address 192.0.2.1"),
        ("dns://[2001:db8::1]", "names the address 2001:db8::1"),
        ("dns://example.com?type=MX", "needs the query form"),
        ("dns://1.1.1.1/example.com?type=PTR", "type 'PTR' is not one of"),
        ("dns://1.1.1.1/example.com?class=IN", "unknown query parameter 'class'"),
        ("dns:///bad..name", "is not a valid DNS name"),
    ],
)
def test_ip_literals_and_malformed_dns_urls_are_refused(url: str, message: str) -> None:
    """Issue 9: dns://192.0.2.1 was accepted and reported up without any query."""
    with pytest.raises(ValueError, match="url") as info:
        Target.model_validate({"name": "d", "url": url})
    assert message in str(info.value)


def test_dns_expectations_only_on_dns_queries() -> None:
    with pytest.raises(ValueError, match="apply to DNS queries only"):
        Target.model_validate({"name": "d", "url": "http://x/", "expect": {"answer_regex": "1"}})
    with pytest.raises(ValueError, match="apply to DNS queries only"):
        Target.model_validate({"name": "d", "url": "dns://x.test", "expect": {"rcode": "NOERROR"}})


@pytest.mark.parametrize("expect", [{}, {"rcode": ["nxdomain", "NOERROR"], "answer_regex": "x"}])
def test_a_dns_target_survives_the_trip_to_a_worker(expect: dict[str, object]) -> None:
    """Targets travel to workers as model_dump(mode='json') and are validated again."""
    t = Target.model_validate({"name": "d", "url": "dns:///a.test?type=MX", "expect": expect})
    assert Target.model_validate(t.model_dump(mode="json")) == t
