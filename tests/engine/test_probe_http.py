"""HTTP(S) probes against local servers, with both transports (same behaviour expected)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from opsq.engines.probe import ProbeEngine, ProbeResult, run_probes
from tests.engine.conftest import Servers, target

pytestmark = pytest.mark.parametrize("transport", ["aiohttp", "httpx"])


def probe(t: object, transport: str, **kwargs: object) -> ProbeResult:
    [result] = run_probes([t], transport=transport, **kwargs)  # type: ignore[list-item]
    return result


def test_healthy_endpoint_is_up_with_http_phases(servers: Servers, transport: str) -> None:
    result = probe(target(f"{servers.http}/ok"), transport)
    assert result.up, result.error
    assert (result.status_code, result.attempts, result.error_kind) == (200, 1, None)
    assert {"connect", "ttfb", "transfer"} <= result.phases.keys()
    assert "tls" not in result.phases


def test_result_survives_a_json_round_trip(servers: Servers, transport: str) -> None:
    result = probe(target(f"{servers.http}/ok"), transport)
    assert ProbeResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_5xx_is_retried_then_down_with_attempts_counted(
    servers: Servers, transport: str, key: str
) -> None:
    result = probe(target(f"{servers.http}/hits/{key}/503", retries=2), transport)
    assert not result.up
    assert (result.error_kind, result.status_code, result.attempts) == ("status", 503, 3)
    assert servers.state.hits[key] == 3
    assert result.error == "status 503 not in 200-399"


def test_flaky_endpoint_recovers_within_retries(servers: Servers, transport: str, key: str) -> None:
    result = probe(target(f"{servers.http}/flaky/{key}/2", retries=3), transport)
    assert result.up, result.error
    assert result.attempts == 3


def test_4xx_is_final_and_not_retried(servers: Servers, transport: str, key: str) -> None:
    result = probe(target(f"{servers.http}/hits/{key}/404", retries=3), transport)
    assert (result.up, result.error_kind, result.attempts) == (False, "status", 1)
    assert servers.state.hits[key] == 1


def test_expected_status_list_accepts_a_non_2xx(servers: Servers, transport: str, key: str) -> None:
    url = f"{servers.http}/hits/{key}/404"
    assert probe(target(url, expect={"status": [404]}), transport).up


def test_slow_endpoint_is_cut_at_the_deadline(servers: Servers, transport: str) -> None:
    """1 s for up to 6 attempts: each gets at least the 0.5 s floor, so two fit."""
    t = target(f"{servers.http}/slow?delay=30", timeout=1, retries=5, retry_on=["timeout"])
    result = probe(t, transport)
    assert (result.up, result.error_kind, result.attempts) == (False, "timeout", 2)
    assert re.fullmatch(r"timeout after 0\.\d+s", result.error or ""), result.error
    assert result.duration_s < 1 + 3  # bounded by the deadline (generous margin)


def test_an_attempt_that_hangs_once_is_retried_within_the_deadline(
    servers: Servers, transport: str, key: str
) -> None:
    """Issue 9: each attempt gets a share of the deadline, so retry_on: timeout can fire
    (with the whole remaining deadline per attempt it never did)."""
    t = target(f"{servers.http}/hang-once/{key}", timeout=4, retries=1, retry_on=["timeout"])
    result = probe(t, transport)
    assert (result.up, result.attempts, result.error) == (True, 2, None)
    assert servers.state.hits[key] == 2


def test_redirect_loop_ends_as_redirect_failure(servers: Servers, transport: str) -> None:
    result = probe(target(f"{servers.http}/loop", max_redirects=3, retries=2), transport)
    assert (result.up, result.error_kind, result.attempts) == (False, "redirect", 1)
    assert "more than 3" in (result.error or "")


def test_redirects_followed_or_reported_as_asked(servers: Servers, transport: str) -> None:
    followed = probe(target(f"{servers.http}/redirect"), transport)
    kept = probe(target(f"{servers.http}/redirect", follow_redirects=False), transport)
    assert (followed.up, followed.status_code) == (True, 200)
    assert (kept.up, kept.status_code) == (True, 302)


def test_method_headers_and_body_are_sent(servers: Servers, transport: str) -> None:
    t = target(
        f"{servers.http}/echo",
        method="post",
        headers={"X-Token": "abc"},
        body="hello",
        expect={"body_regex": r"^POST abc hello$"},
    )
    result = probe(t, transport)
    assert result.up, result.error


def test_body_regex_mismatch_is_a_final_assertion(servers: Servers, transport: str) -> None:
    t = target(f"{servers.http}/ok", retries=3, expect={"body_regex": "^nope"})
    result = probe(t, transport)
    assert (result.up, result.error_kind, result.attempts) == (False, "body", 1)
    assert result.error == "body does not match '^nope'"
    assert probe(target(f"{servers.http}/ok", expect={"body_regex": "ok$"}), transport).up


def test_header_regex_is_checked(servers: Servers, transport: str) -> None:
    good = target(f"{servers.http}/ok", expect={"header_regex": {"x-probe": r"yes-\d+"}})
    bad = target(f"{servers.http}/ok", expect={"header_regex": {"X-Probe": r"^no"}})
    missing = target(f"{servers.http}/ok", expect={"header_regex": {"X-Absent": "."}})
    assert probe(good, transport).up
    assert probe(bad, transport).error_kind == "header"
    assert probe(missing, transport).error == "header x-absent missing"


def test_max_latency_is_checked(servers: Servers, transport: str) -> None:
    t = target(f"{servers.http}/slow?delay=0.5", expect={"max_latency": "50ms"})
    result = probe(t, transport)
    assert (result.up, result.error_kind) == (False, "latency")
    assert "max_latency" in (result.error or "")


def test_connection_refused_is_connect_and_retried(closed_port: int, transport: str) -> None:
    result = probe(target(f"http://127.0.0.1:{closed_port}/", retries=2), transport)
    assert (result.up, result.error_kind, result.attempts) == (False, "connect", 3)
    assert result.error == "connection refused"


def test_unresolvable_name_is_dns(transport: str) -> None:
    result = probe(target("http://something.invalid/", retries=1), transport)
    assert (result.up, result.error_kind, result.attempts) == (False, "dns", 1)


def test_https_with_trusted_ca_has_tls_phase_and_cert_days(
    servers: Servers, transport: str
) -> None:
    result = probe(
        target(f"{servers.https}/ok", expect={"min_cert_days": 30}),
        transport,
        ssl_context=servers.client_context(),
    )
    assert result.up, result.error
    assert {"connect", "tls", "ttfb", "transfer"} <= result.phases.keys()
    assert result.cert_days_left is not None
    assert 300 < result.cert_days_left < 366


def test_certificate_near_expiry_fails_min_cert_days(servers: Servers, transport: str) -> None:
    t = target(
        f"{servers.https_expiring}/ok", verify_tls=False, retries=2, expect={"min_cert_days": 14}
    )
    result = probe(t, transport)
    assert (result.up, result.error_kind, result.attempts) == (False, "cert", 1)
    assert result.cert_days_left is not None
    assert 2 < result.cert_days_left < 3.1
    assert "certificate expires in" in (result.error or "")


def test_self_signed_probes_when_verify_is_off(servers: Servers, transport: str) -> None:
    result = probe(target(f"{servers.https_expiring}/ok", verify_tls=False), transport)
    assert result.up, result.error
    assert result.cert_days_left is not None


def test_tls_verification_failure_is_final(servers: Servers, transport: str) -> None:
    t = target(f"{servers.https}/ok", retries=3, retry_on=["timeout", "connect", "5xx"])
    result = probe(t, transport)  # the test CA is not trusted by default
    assert (result.up, result.error_kind, result.attempts) == (False, "cert", 1)
    assert "certificate verify failed" in (result.error or "")


def test_reused_connections_still_report_cert_days(servers: Servers, transport: str) -> None:
    async def scenario() -> list[ProbeResult]:
        async with ProbeEngine(transport=transport) as engine:  # type: ignore[arg-type]
            t = target(f"{servers.https}/ok", verify_tls=False, reuse_connections=True)
            return [await engine.probe(t) for _ in range(3)]

    results = asyncio.run(scenario())
    assert all(r.up and r.cert_days_left is not None for r in results)


def test_server_hanging_up_is_a_retried_connect_failure(servers: Servers, transport: str) -> None:
    result = probe(target(f"{servers.http}/drop", retries=1), transport)
    assert (result.up, result.error_kind, result.attempts) == (False, "connect", 2)


def test_https_to_a_plain_http_port_is_a_final_tls_failure(
    servers: Servers, transport: str
) -> None:
    url = f"https://127.0.0.1:{servers.http_port}/ok"
    result = probe(target(url, verify_tls=False, retries=2), transport)
    assert (result.up, result.error_kind, result.attempts) == (False, "tls", 1)
    assert result.error == "TLS error: WRONG_VERSION_NUMBER"


def test_default_headers_name_the_prober_and_targets_can_override(
    servers: Servers, transport: str
) -> None:
    named = target(f"{servers.http}/headers", expect={"body_regex": r'"user-agent": "opsq-probe/'})
    custom = target(
        f"{servers.http}/headers",
        headers={"user-agent": "custom/1"},
        expect={"body_regex": r'"user-agent": "custom/1"'},
    )
    assert probe(named, transport).up
    assert probe(custom, transport).up


def test_gzip_body_is_decoded_for_body_regex(servers: Servers, transport: str) -> None:
    result = probe(
        target(f"{servers.http}/gzip", expect={"body_regex": "compressed hello"}), transport
    )
    assert result.up, result.error


@pytest.mark.parametrize("reuse", [False, True])
def test_fresh_connection_per_probe_unless_reuse_is_asked(
    servers: Servers, transport: str, key: str, reuse: bool
) -> None:
    async def scenario() -> None:
        async with ProbeEngine(transport=transport) as engine:  # type: ignore[arg-type]
            t = target(f"{servers.http}/conn/{key}", reuse_connections=reuse)
            for _ in range(3):
                assert (await engine.probe(t)).up

    asyncio.run(scenario())
    assert len(servers.state.client_ports[key]) == (1 if reuse else 3)
