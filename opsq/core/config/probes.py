"""Probe targets: the shape of a targets file and of one probe.

A targets file is Gatus-like::

    defaults: {timeout: 2s, retries: 1}
    targets:
      - name: api
        url: http://127.0.0.1:8080/healthz
        expect: {status: [200], body_regex: ok, max_latency: 500ms}

``defaults`` is deep-merged under each target. Everything is validated before any
work is enqueued, so a typo fails the whole run at start instead of one probe at 3 am.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from opsq.core.config.base import Section
from opsq.core.config.fields import ExistingFile, Regex
from opsq.core.durations import Duration

RetryOn = Literal["timeout", "connect", "5xx", "dns"]
MAX_THRESHOLD = 20
"""Upper bound of failure/success thresholds (the state keeps that many verdicts)."""
LOCATION_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,40}$"
"""A location names a Celery queue, ``probes.<location>``."""
DEFAULT_LOCATION = "default"
"""The one location of a set without ``locations`` (its batches go to ``probes``)."""
DEFAULT_STATUS: tuple[tuple[int, int], ...] = ((200, 399),)


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

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: object) -> tuple[tuple[int, int], ...]:
        items = value if isinstance(value, list | tuple) else [value]
        if not items:
            raise ValueError("status list is empty; omit it to accept 200-399")
        return tuple(_parse_status(i) for i in items)

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


class Target(ProbeSpec):
    """One thing to probe: ``http(s)://``, ``tcp://host:port`` or ``dns://name``."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https", "tcp", "dns"):
            raise ValueError(f"url {value!r} must start with http://, https://, tcp:// or dns://")
        if not parts.hostname:
            raise ValueError(f"url {value!r} has no host name")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"url {value!r} has an invalid port") from exc
        if parts.scheme == "tcp" and port is None:
            raise ValueError(f"url {value!r}: tcp:// probes need a port, e.g. tcp://db:5432")
        return value.strip()

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def key(self) -> str:
        """Identity of the target within a run (results are keyed by it)."""
        return f"{self.name}|{self.url}"


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

    @model_validator(mode="after")
    def _one_source(self) -> ProbeSet:
        if (self.file is None) == (self.targets is None):
            raise ValueError("a probe set needs exactly one of 'file' or 'targets'")
        if self.targets is not None:
            self.targets_file()  # inline targets fail at config load, not at 3 am
        return self

    @model_validator(mode="after")
    def _quorum_fits(self) -> ProbeSet:
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
