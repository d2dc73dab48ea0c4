"""What one probe reports: :class:`ProbeResult`, the engine's only output.

It crosses process boundaries (Celery JSON payloads, the Redis results store), so it is
a frozen dataclass with an explicit JSON-safe :meth:`ProbeResult.to_dict` /
:meth:`ProbeResult.from_dict` pair instead of pickling: the wire shape is visible here
and a stored result from an older worker still loads (unknown keys are ignored).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

ErrorKind = Literal[
    "dns",
    "connect",
    "tls",
    "cert",
    "timeout",
    "status",
    "header",
    "body",
    "latency",
    "redirect",
    "other",
]
ERROR_KIND_MEANINGS: dict[ErrorKind, str] = {
    "dns": "the name did not resolve, or a dns:// probe got an unexpected rcode or no answer",
    "connect": "the TCP connection was refused, reset or unreachable",
    "tls": "the TLS handshake failed (protocol, cipher, client certificate refused)",
    "cert": "the server's certificate: not trusted, wrong name, expired, or fewer "
    "days left than expect.min_cert_days",
    "timeout": "the attempt's share of the deadline ran out",
    "status": "the HTTP status is not in expect.status (5xx included)",
    "header": "a response header is missing or does not match expect.header_regex",
    "body": "the body does not match expect.body_regex, or no DNS answer matches "
    "expect.answer_regex",
    "latency": "the response came slower than expect.max_latency",
    "redirect": "more redirects than max_redirects",
    "other": "anything else: a batch given up after redeliveries, an unclassified error",
}
"""The stable set of failure categories, one per ``error_kind`` of a down result.

Every down result carries exactly one of these (an up result carries none); alerts,
metrics (``opsq_probe_failures_total{kind}``) and the monitor route on them, so a kind
is only ever added, never renamed. The ``error`` text says the precise reason.
"""
ERROR_KINDS: tuple[ErrorKind, ...] = tuple(ERROR_KIND_MEANINGS)

PHASES = ("ratelimit", "dns", "connect", "tls", "ttfb", "transfer")
"""``ratelimit`` is the wait for a rate-limit token, outside the deadline and duration_s."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The verdict on one target, with the numbers behind it."""

    name: str
    url: str
    group: str
    up: bool
    status_code: int | None
    attempts: int
    duration_s: float
    """The whole probe: every attempt and backoff sleep (not rate-limit waits)."""
    phases: dict[str, float]
    """Seconds per phase of the last attempt (only the phases that happened)."""
    error: str | None
    error_kind: ErrorKind | None
    cert_days_left: float | None
    """Days until the earliest expiry in the certificate chain (negative: expired)."""
    started_at: float
    """Epoch seconds."""
    cert_expires_at: float | None = None
    """Epoch seconds of that expiry (the cert expiry gauge's value)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (plain str, int, float, bool, None and dicts of them)."""
        data = asdict(self)
        data["phases"] = dict(self.phases)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        """Inverse of :meth:`to_dict`; ignores keys it does not know."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["phases"] = {str(k): float(v) for k, v in (values.get("phases") or {}).items()}
        return cls(**values)
