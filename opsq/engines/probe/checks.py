"""Assertions on a response: status, headers, body, latency, certificate lifetime.

Each check returns ``None`` when satisfied or a :class:`ProbeFailure` saying why not,
with its kind from the stable set in :mod:`.result` (status, header, body, latency,
cert). Only a 5xx is a *temporary* verdict (retried when ``retry_on`` has ``5xx``);
every other failed expectation is final: retrying a 404 or a wrong body wastes the
deadline and load on the target.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from opsq.core.config.probes import Expect
from opsq.engines.probe.errors import ProbeFailure


@functools.lru_cache(maxsize=4096)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _ranges(expect: Expect) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in expect.status)


def check_status(expect: Expect, code: int) -> ProbeFailure | None:
    if expect.status_ok(code):
        return None
    retry_as = "5xx" if 500 <= code <= 599 else None
    return ProbeFailure("status", f"status {code} not in {_ranges(expect)}", retry_as=retry_as)


def check_headers(expect: Expect, headers: Mapping[str, str]) -> ProbeFailure | None:
    for name, pattern in expect.header_regex.items():
        value = headers.get(name)
        if value is None:
            return ProbeFailure("header", f"header {name} missing")
        if not _regex(pattern).search(value):
            return ProbeFailure("header", f"header {name} {value!r} does not match {pattern!r}")
    return None


def check_body(expect: Expect, body: str) -> ProbeFailure | None:
    pattern = expect.body_regex
    if pattern is None or _regex(pattern).search(body):
        return None
    return ProbeFailure("body", f"body does not match {pattern!r}")


def check_latency(expect: Expect, seconds: float) -> ProbeFailure | None:
    limit = expect.max_latency
    if limit is None or seconds <= limit:
        return None
    return ProbeFailure("latency", f"latency {seconds:.3f}s over max_latency {limit:g}s")


def check_cert(expect: Expect, days_left: float | None) -> ProbeFailure | None:
    minimum = expect.min_cert_days
    if minimum is None:
        return None
    if days_left is None:
        return ProbeFailure("cert", f"no TLS certificate seen to check min_cert_days {minimum:g}")
    if days_left < minimum:
        return ProbeFailure("cert", f"certificate expires in {days_left:.1f} days (< {minimum:g})")
    return None
