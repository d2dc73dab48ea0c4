"""TCP connect and DNS resolution probes."""

from __future__ import annotations

from opsq.engines.probe import run_probes
from tests.engine.conftest import Servers, target


def test_tcp_probe_up_when_port_accepts(servers: Servers) -> None:
    [result] = run_probes([target(f"tcp://127.0.0.1:{servers.http_port}")])
    assert result.up, result.error
    assert "connect" in result.phases
    assert result.status_code is None


def test_tcp_probe_to_closed_port_is_connect_failure_and_retried(closed_port: int) -> None:
    [result] = run_probes([target(f"tcp://127.0.0.1:{closed_port}", retries=1)])
    assert (result.up, result.error_kind, result.attempts) == (False, "connect", 2)
    assert result.error == "connection refused"


def test_tcp_probe_resolves_names_and_times_dns(servers: Servers) -> None:
    [result] = run_probes([target(f"tcp://localhost:{servers.http_port}")])
    assert result.up, result.error
    assert {"dns", "connect"} <= result.phases.keys()


def test_dns_probe_up_when_name_resolves() -> None:
    [result] = run_probes([target("dns://localhost")])
    assert result.up, result.error
    assert "dns" in result.phases


def test_dns_probe_down_for_reserved_invalid_tld_and_retried_when_asked() -> None:
    t = target("dns://something.invalid", retries=1, retry_on=["dns"])
    [result] = run_probes([t])
    assert (result.up, result.error_kind, result.attempts) == (False, "dns", 2)
    assert result.error is not None
    assert result.error.startswith("cannot resolve")


def test_mixed_batch_keeps_input_order_and_never_raises(servers: Servers, closed_port: int) -> None:
    urls = [
        f"{servers.http}/ok",
        "dns://something.invalid",
        f"tcp://127.0.0.1:{closed_port}",
        f"{servers.http}/loop",
        "dns://localhost",
    ]
    results = run_probes([target(u, name=f"n{i}") for i, u in enumerate(urls)])
    assert [r.url for r in results] == urls
    assert [r.up for r in results] == [True, False, False, False, True]


def test_http_to_a_host_name_times_dns_on_the_aiohttp_transport(servers: Servers) -> None:
    """httpcore resolves inside its connect step, so only aiohttp reports dns apart."""
    [result] = run_probes([target(f"http://localhost:{servers.http_port}/ok")])
    assert result.up, result.error
    assert {"dns", "connect", "ttfb", "transfer"} <= result.phases.keys()
