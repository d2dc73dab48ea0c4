"""Pure units of the probe engine: redirect rules, error classification, checks."""

from __future__ import annotations

import socket
import ssl

import aiohttp
import httpx
import pytest

from opsq.core.config.probes import Expect
from opsq.engines.probe import ERROR_KIND_MEANINGS, ERROR_KINDS, checks
from opsq.engines.probe.errors import classify
from opsq.engines.probe.http import _redirected


def _post() -> httpx.Request:
    return httpx.Request(
        "POST",
        "http://a.example/start",
        headers={"Authorization": "Bearer x", "X-Keep": "1"},
        content=b"payload",
    )


def test_302_turns_post_into_get_and_drops_the_body() -> None:
    nxt = _redirected(_post(), 302, "/next")
    assert (nxt.method, str(nxt.url), nxt.content) == ("GET", "http://a.example/next", b"")
    assert "content-length" not in nxt.headers
    assert nxt.headers["authorization"] == "Bearer x"  # same origin keeps it


def test_307_keeps_method_and_body() -> None:
    nxt = _redirected(_post(), 307, "http://a.example/other")
    assert (nxt.method, nxt.content) == ("POST", b"payload")


def test_cross_origin_redirect_drops_authorization_and_fixes_host() -> None:
    nxt = _redirected(_post(), 303, "https://b.example/landing")
    assert "authorization" not in nxt.headers
    assert nxt.headers["host"] == "b.example"
    assert nxt.headers["x-keep"] == "1"


def _raised(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        # httpx-aiohttp maps every aiohttp connection error to ConnectTimeout.
        (_raised(httpx.ConnectTimeout("x"), aiohttp.ServerDisconnectedError()), "connect"),
        (_raised(httpx.ReadTimeout("x"), TimeoutError()), "timeout"),
        (httpx.ReadTimeout("x"), "timeout"),
        (_raised(httpx.ConnectError("x"), socket.gaierror(-2, "Name or service not known")), "dns"),
        (_raised(httpx.ConnectError("x"), ConnectionRefusedError(111, "refused")), "connect"),
        (_raised(httpx.ConnectError("x"), ssl.SSLError(1, "wrong version")), "tls"),
        (_raised(httpx.ConnectError("x"), ssl.SSLCertVerificationError(1, "expired")), "cert"),
        (ValueError("odd"), "other"),
    ],
)
def test_library_errors_map_to_kinds(exc: BaseException, kind: str) -> None:
    assert classify(exc, timeout=2)[0] == kind


def test_status_ranges_are_named_in_the_reason() -> None:
    expect = Expect.model_validate({"status": [200, "300-302"]})
    failure = checks.check_status(expect, 404)
    assert failure is not None
    assert (failure.kind, failure.message) == ("status", "status 404 not in 200, 300-302")
    assert checks.check_status(expect, 301) is None


def test_missing_certificate_fails_min_cert_days_but_not_without_it() -> None:
    assert checks.check_cert(Expect(), None) is None
    failure = checks.check_cert(Expect(min_cert_days=7), None)
    assert failure is not None
    assert failure.kind == "cert"


def test_every_check_failure_has_a_kind_from_the_documented_set() -> None:
    """The monitor and alerts route on error_kind: each check names its own category."""
    expect = Expect.model_validate(
        {"body_regex": "^ok", "header_regex": {"x": "y"}, "max_latency": 0.1, "min_cert_days": 9}
    )
    failures = [
        checks.check_status(expect, 404),
        checks.check_status(expect, 503),
        checks.check_headers(expect, {}),
        checks.check_body(expect, "no"),
        checks.check_latency(expect, 1.0),
        checks.check_cert(expect, 3.0),
    ]
    kinds = [f.kind if f is not None else None for f in failures]
    assert kinds == ["status", "status", "header", "body", "latency", "cert"]
    assert set(kinds) <= set(ERROR_KINDS)
    assert [f.retry_as for f in failures[:2] if f is not None] == ["status", "5xx"]
    assert set(ERROR_KIND_MEANINGS) == set(ERROR_KINDS)
