"""Probe targets: the shape of a targets file and of one probe.

A targets file is Gatus-like::

    defaults: {timeout: 2s, retries: 1}
    targets:
      - name: api
        url: http://127.0.0.1:8080/healthz
        expect: {status: [200], body_regex: ok, max_latency: 500ms}

``defaults`` is deep-merged under each target. Everything is validated before any
work is enqueued, so a typo fails the whole run at start instead of one probe at 3 am.

Files a target names (``ca_file``, ``cert_file``, ``key_file``) are resolved like every
path in a config (relative to the file naming them, stored absolute) and checked to
exist where the targets are loaded (``opsq probe``, ``opsq config check``, beat's probe
sets). A worker re-validates each batch it receives with :data:`ON_WORKER` as context,
which skips that check: a file missing on one worker makes its probes fail with a
clear reason instead of refusing the whole batch.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, parse_qsl, urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from opsq.core.config.base import Invalid, Section, resolve_path
from opsq.core.config.fields import ExistingFile, Regex, shown_url
from opsq.core.durations import Duration

RetryOn = Literal["timeout", "connect", "5xx", "dns"]
MAX_THRESHOLD = 20
"""Upper bound of failure/success thresholds (the state keeps that many verdicts)."""
LOCATION_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,40}$"
"""A location names a Celery queue, ``probes.<location>``."""
DEFAULT_LOCATION = "default"
"""The one location of a set without ``locations`` (its batches go to ``probes``)."""
DEFAULT_STATUS: tuple[tuple[int, int], ...] = ((200, 399),)
DnsType = Literal["A", "AAAA", "CNAME", "MX", "TXT", "NS", "SRV"]
DNS_TYPES: tuple[DnsType, ...] = ("A", "AAAA", "CNAME", "MX", "TXT", "NS", "SRV")
Rcode = Literal[
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
    "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE",
]  # fmt: skip
ON_WORKER = {"check_files": False}
"""Validation context for targets a worker receives: files are checked at load time."""
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _parse_status(item: object) -> tuple[int, int]:
    """``200`` -> (200, 200); ``"200-299"`` -> (200, 299); ``"2xx"`` -> (200, 299)."""
    if isinstance(item, bool):
        raise ValueError("status must be a code such as 200, a range '200-299' or '2xx'")
    if isinstance(item, int):
        lo = hi = item
    elif (
        isinstance(item, list | tuple)
        and len(item) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in item)
    ):
        lo, hi = item  # the dumped form [[200, 399]], as a target travels in a task
    elif isinstance(item, str) and re.fullmatch(r"[1-5]xx", item.strip()):
        lo = int(item.strip()[0]) * 100
        hi = lo + 99
    elif isinstance(item, str) and re.fullmatch(r"\s*\d{3}\s*(-\s*\d{3}\s*)?", item):
        bounds = [int(p) for p in item.split("-")]
        lo, hi = bounds[0], bounds[-1]
    else:
        raise ValueError(f"status {item!r} is not a code (200), a range ('200-299') or '2xx'")
    if not (100 <= lo <= hi <= 599):
        raise ValueError(f"status range {item!r} must lie within 100-599, low before high")
    return lo, hi


class Expect(Section):
    """What a probe must see to be *up*."""

    status: tuple[tuple[int, int], ...] = DEFAULT_STATUS
    body_regex: Regex | None = None
    header_regex: dict[str, Regex] = Field(default_factory=dict)
    max_latency: Duration | None = None
    min_cert_days: Annotated[float, Field(ge=0)] | None = None
    degraded_latency: Duration | None = None
    """Up but slower than this: the target's state becomes ``degraded``."""
    cert_warn_days: Annotated[float, Field(ge=0)] | None = None
    """Up but the certificate expires within this many days: ``degraded``."""
    answer_regex: Regex | None = None
    """dns:// with a server path: some answer record's text must match."""
    rcode: tuple[Rcode, ...] | None = None
    """dns:// with a server path: accepted response codes (default NOERROR only)."""

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: object) -> tuple[tuple[int, int], ...]:
        items = value if isinstance(value, list | tuple) else [value]
        if not items:
            raise ValueError("status list is empty; omit it to accept 200-399")
        return tuple(_parse_status(i) for i in items)

    @field_validator("rcode", mode="before")
    @classmethod
    def _rcode(cls, value: object) -> object:
        if value is None:
            return None
        items = value if isinstance(value, list | tuple) else [value]
        if not items:
            raise ValueError("rcode list is empty; omit it to accept NOERROR")
        return tuple(i.upper() if isinstance(i, str) else i for i in items)

    @field_validator("header_regex")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return {k.lower(): v for k, v in value.items()}

    def status_ok(self, code: int) -> bool:
        return any(lo <= code <= hi for lo, hi in self.status)


class ProbeSpec(Section):
    """Everything about how to probe, shared by ``defaults:`` and each target."""

    method: str = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    follow_redirects: bool = True
    max_redirects: Annotated[int, Field(ge=0, le=50)] = 10
    verify_tls: bool = True
    ca_file: str | None = None
    """PEM bundle of the CAs to trust for this target instead of the system's."""
    cert_file: str | None = None
    """Client certificate (PEM) for mTLS; may hold the key too."""
    key_file: str | None = None
    """Private key of ``cert_file`` when it is a separate file."""
    reuse_connections: bool = False
    timeout: Annotated[Duration, Field(gt=0, le=600)] = 5.0
    """The per-probe deadline: all attempts and backoff sleeps together."""
    retries: Annotated[int, Field(ge=0, le=20)] = 0
    backoff_base: Annotated[Duration, Field(ge=0)] = 0.1
    backoff_cap: Annotated[Duration, Field(ge=0)] = 2.0
    retry_on: tuple[RetryOn, ...] = ("timeout", "connect", "5xx")
    group: str = "default"
    """Bounded metrics label. URLs become labels only with ``metrics.url_labels``."""
    expect: Expect = Field(default_factory=Expect)
    failure_threshold: Annotated[int, Field(ge=1, le=MAX_THRESHOLD)] | None = None
    """Consecutive failing verdicts before the state worsens (None: the set's value)."""
    success_threshold: Annotated[int, Field(ge=1, le=MAX_THRESHOLD)] | None = None
    """Consecutive passing verdicts before the state recovers (None: the set's value)."""
    notify: tuple[str, ...] | None = None
    """Notifier names from ``alerts.notifiers`` (None: the set's ``notify``)."""

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        method = value.upper()
        if not re.fullmatch(r"[A-Z]+", method):
            raise ValueError(f"method {value!r} is not an HTTP method such as GET or POST")
        return method

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        path = resolve_path(Path(value))
        if (info.context or {}).get("check_files", True) and not path.is_file():
            raise Invalid(
                f"{info.field_name} {str(path)!r} does not exist or is not a file",
                fix="correct the path (relative to the file naming it) or create the file; "
                "every worker needs it at the same absolute path",
            )
        return str(path)

    @model_validator(mode="after")
    def _key_needs_cert(self) -> ProbeSpec:
        if self.key_file is not None and self.cert_file is None:
            raise Invalid("key_file is set without cert_file", fix="add the client certificate")
        return self


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""Control characters (Unicode category Cc): not allowed in a target's name."""


class Target(ProbeSpec):
    """One thing to probe: ``http(s)://``, ``tcp://host:port`` or ``dns://name``."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    url: str

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str) -> str:
        # A newline split the table's row in two; an ESC in a generated inventory reached
        # the terminal as an escape sequence.
        bad = _CONTROL.search(value)
        if bad is not None:
            raise Invalid(
                f"name {value!r} holds the control character {bad.group()!r}",
                fix="remove newlines, tabs and other control characters from the name",
            )
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https", "tcp", "dns"):
            raise ValueError(
                f"url {shown_url(value)} must start with http://, https://, tcp:// or dns://"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"url {shown_url(value)} has an invalid port") from exc
        if parts.scheme == "dns":
            _check_dns(value.strip(), parts)
        elif not parts.hostname:
            raise ValueError(f"url {shown_url(value)} has no host name")
        if parts.scheme == "tcp" and port is None:
            raise ValueError(
                f"url {shown_url(value)}: tcp:// probes need a port, e.g. tcp://db:5432"
            )
        return value.strip()

    @model_validator(mode="after")
    def _dns_expectations(self) -> Target:
        if (self.expect.answer_regex or self.expect.rcode) and dns_query(self.url) is None:
            raise ValueError(
                f"expect.answer_regex and expect.rcode apply to DNS queries only; url "
                f"{shown_url(self.url)} is not one (write dns:///NAME?type=A for the system's name "
                "servers, or dns://SERVER/NAME?type=A)"
            )
        return self

    @property
    def host(self) -> str:
        """The host the probe talks to (a dns:// query's server, if it names one)."""
        return urlsplit(self.url).hostname or ""

    @property
    def key(self) -> str:
        """Identity of the target within a run (results are keyed by it)."""
        return f"{self.name}|{self.url}"


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """What ``dns://[server[:port]]/name?type=T`` asks (RFC 4501's form)."""

    server: str | None
    """An address or host name; None: the system's name servers (resolv.conf)."""
    port: int
    name: str
    rdtype: DnsType


def dns_query(url: str) -> DnsQuery | None:
    """The query of a ``dns://`` URL with a path; None for other URLs and ``dns://name``
    (a lookup through the system resolver, getaddrinfo). Call on validated URLs."""
    parts = urlsplit(url)
    if parts.scheme != "dns" or parts.path in ("", "/"):
        return None
    rdtype = dict(parse_qsl(parts.query)).get("type", "A").upper()
    return DnsQuery(parts.hostname, parts.port or 53, parts.path[1:], rdtype)  # type: ignore[arg-type]


def _check_dns(url: str, parts: SplitResult) -> None:
    """``dns://name`` or ``dns://[server[:port]]/name?type=T``; never an address to look up."""
    if parts.path in ("", "/"):
        name = parts.hostname or ""
        if _is_ip(name):
            raise ValueError(
                f"url {shown_url(url)} names the address {name} but no name to look up; to ask the "
                f"DNS server at {parts.netloc} write dns://{parts.netloc}/example.com"
            )
        if parts.port is not None or parts.query:
            raise ValueError(
                f"url {shown_url(url)}: a server port or a record type needs the query form "
                f"dns://SERVER[:PORT]/NAME?type=A (dns:///NAME?type=A for the system's servers)"
            )
        _check_dns_name(url, name)
        return
    name = parts.path[1:]
    if _is_ip(name):
        raise ValueError(
            f"url {shown_url(url)} asks to look up the address {name}; a dns:// probe looks up a "
            "name, e.g. dns://1.1.1.1/example.com?type=A"
        )
    _check_dns_name(url, name)
    query = parse_qsl(parts.query, keep_blank_values=True)
    unknown = [k for k, _ in query if k != "type"]
    if unknown:
        raise ValueError(
            f"url {shown_url(url)}: unknown query parameter {unknown[0]!r}; only type="
        )
    rdtype = dict(query).get("type", "A").upper()
    if rdtype not in DNS_TYPES:
        raise ValueError(
            f"url {shown_url(url)}: type {rdtype!r} is not one of {', '.join(DNS_TYPES)}"
        )


def _check_dns_name(url: str, name: str) -> None:
    labels = name.removesuffix(".").split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(x) for x in labels):
        raise ValueError(f"url {shown_url(url)}: {name!r} is not a valid DNS name")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class TargetsFile(Section):
    """The whole targets file."""

    defaults: dict[str, Any] = Field(default_factory=dict)
    targets: Annotated[list[Target], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise ValueError("defaults must be a mapping of probe settings")
        ProbeSpec.model_validate(defaults)  # a bad default is reported once, as such
        targets = data.get("targets")
        if isinstance(targets, list):
            data = {**data, "targets": [merge_defaults(defaults, t) for t in targets]}
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> TargetsFile:
        seen: set[str] = set()
        for target in self.targets:
            if target.key in seen:
                raise ValueError(f"target {target.name!r} with url {target.url} appears twice")
            seen.add(target.key)
        return self


def merge_defaults(base: dict[str, Any], over: object) -> object:
    """*over* (one target entry) deep-merged over *base* (the file's ``defaults``)."""
    if not base or not isinstance(over, dict):
        return over
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_defaults(merged[key], value)
        else:
            merged[key] = value
    return merged


class ProbeSet(Section):
    """A named probe set run by beat on an interval; its runs update target states."""

    file: ExistingFile | None = None
    """A targets file; relative to the config file. Stored as an absolute path."""
    targets: list[Target] | None = None
    """Inline targets: validated like a targets file's, errors located in the config."""
    interval: Annotated[Duration, Field(ge=1)] = 60.0
    locations: list[Annotated[str, Field(pattern=LOCATION_PATTERN)]] | None = None
    """Each location is the Celery queue ``probes.<location>``; every target is probed
    from every location. None: the ``probes`` queue, one implicit location."""
    quorum: Annotated[int, Field(ge=1)] | None = None
    """Failing locations needed for a ``down`` verdict (None: a majority)."""
    deadline: Annotated[Duration, Field(gt=0)] | None = None
    """A location with no result this long after the run started is ``missing``
    (None: the interval)."""
    failure_threshold: Annotated[int, Field(ge=1, le=MAX_THRESHOLD)] = 3
    success_threshold: Annotated[int, Field(ge=1, le=MAX_THRESHOLD)] = 2
    notify: tuple[str, ...] = ()
    """Notifier names from ``alerts.notifiers`` used by every target of the set."""
    history: bool = True
    """Record the set's runs as history (raw verdicts, rollups, incidents) when
    ``history.enabled``; False keeps state and alerts only (history is about three
    quarters of what monitoring a set costs the workers)."""

    @model_validator(mode="after")
    def _one_source(self) -> ProbeSet:
        if (self.file is None) == (self.targets is None):
            raise ValueError("a probe set needs exactly one of 'file' or 'targets'")
        if self.targets is not None:
            self.targets_file()  # inline targets fail at config load, not at 3 am
        return self

    @model_validator(mode="after")
    def _quorum_fits(self) -> ProbeSet:
        if self.locations == []:
            raise ValueError("locations is empty: list the locations to probe from, or "
                             "leave locations out to probe from the probes queue")  # fmt: skip
        locations = self.locations or []
        if len(set(locations)) != len(locations):
            raise ValueError(f"locations {locations} name a location twice")
        if self.quorum is not None and self.quorum > max(1, len(locations)):
            raise ValueError(
                f"quorum {self.quorum} is more than the {max(1, len(locations))} location(s); "
                "lower quorum or add locations"
            )
        return self

    @property
    def location_names(self) -> tuple[str, ...]:
        """The set's locations; ``("default",)`` for a set without ``locations``."""
        return tuple(self.locations) if self.locations else (DEFAULT_LOCATION,)

    @property
    def effective_quorum(self) -> int:
        return self.quorum or len(self.location_names) // 2 + 1

    @property
    def effective_deadline(self) -> float:
        return self.deadline if self.deadline is not None else self.interval

    def targets_file(self) -> TargetsFile:
        """The inline targets as a targets file (not for ``file:`` sets)."""
        return TargetsFile(targets=self.targets or [])
