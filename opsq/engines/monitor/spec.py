"""What the monitor needs to know about a set run, stored when the run is created.

The run-completion hook runs on whichever worker wrote the last result (or in the
alerts tick, at the run's deadline), possibly long after the set's file was read, so
the set's monitoring parameters travel with the run: locations, quorum, deadline,
thresholds, notifiers and the warning lines. Per-target values are stored only where
a target differs from the set, which keeps a 10,000-target spec small.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

import orjson

from opsq.core.config.probes import ProbeSet, Target
from opsq.engines.monitor.state import Thresholds
from opsq.engines.monitor.verdict import WarningLines


@dataclass(frozen=True)
class TargetSpec:
    failure_threshold: int
    success_threshold: int
    notify: tuple[str, ...]
    degraded_latency: float | None = None
    cert_warn_days: float | None = None

    # Cached (in the instance's __dict__, which a frozen dataclass allows): applying a
    # run asks every target for both, and most targets share the set's defaults.
    @cached_property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.failure_threshold, self.success_threshold)

    @cached_property
    def lines(self) -> WarningLines:
        return WarningLines(self.degraded_latency, self.cert_warn_days)


@dataclass(frozen=True)
class RunSpec:
    set: str
    locations: tuple[str, ...]
    quorum: int
    created_at: float
    deadline_at: float
    defaults: TargetSpec
    overrides: dict[str, TargetSpec] = field(default_factory=dict)
    names: dict[str, tuple[str, str]] = field(default_factory=dict)
    """target key -> (name, url), in file order."""
    total: int = 0
    """Targets of the run (``names`` of the whole run; a head or a batch has fewer)."""
    history: bool = True
    """Whether the set's runs are recorded as history (the set's ``history``)."""
    overridden: int = 0
    """Targets with their own spec (a head keeps them apart, in a hash)."""

    @property
    def size(self) -> int:
        return self.total or len(self.names)

    def target(self, key: str) -> TargetSpec:
        return self.overrides.get(key, self.defaults)

    def dumps(self) -> bytes:
        # Not asdict(self): it deep-copies ``names`` (a tuple per target), most of the
        # cost of registering a 3,000-target run; orjson writes tuples as arrays.
        return orjson.dumps({
            "set": self.set, "locations": self.locations, "quorum": self.quorum,
            "created_at": self.created_at, "deadline_at": self.deadline_at,
            "defaults": asdict(self.defaults),
            "overrides": {k: asdict(v) for k, v in self.overrides.items()},
            "names": self.names, "total": self.size, "history": self.history,
        })  # fmt: skip

    def dumps_head(self) -> bytes:
        """The spec without ``names`` and ``overrides`` (a few hundred bytes): what
        applying one batch of the run reads, with its targets' overrides
        (:meth:`dumps_overrides`, a hash) and the names its results carry."""
        return orjson.dumps({
            "set": self.set, "locations": self.locations, "quorum": self.quorum,
            "created_at": self.created_at, "deadline_at": self.deadline_at,
            "defaults": asdict(self.defaults), "overrides": {}, "names": {},
            "total": self.size, "history": self.history, "overridden": len(self.overrides),
        })  # fmt: skip

    def dumps_overrides(self) -> dict[str, bytes]:
        return {k: orjson.dumps(asdict(v)) for k, v in self.overrides.items()}

    def for_batch(
        self, names: dict[str, tuple[str, str]], overrides: Mapping[str, str | bytes]
    ) -> RunSpec:
        """This head over one batch: its targets and their stored overrides."""
        own = {k: _target_spec(orjson.loads(v)) for k, v in overrides.items()}
        return replace(self, names=names, overrides=own, overridden=len(own))

    def with_names(self, names: dict[str, tuple[str, str]]) -> RunSpec:
        """This spec over *names* only (one batch of the run)."""
        return replace(self, names=names)

    @classmethod
    def loads(cls, raw: str | bytes) -> RunSpec:
        data = orjson.loads(raw)
        return cls(
            set=data["set"], locations=tuple(data["locations"]), quorum=int(data["quorum"]),
            created_at=float(data["created_at"]), deadline_at=float(data["deadline_at"]),
            defaults=_target_spec(data["defaults"]),
            overrides={k: _target_spec(v) for k, v in data["overrides"].items()},
            names={k: (v[0], v[1]) for k, v in data["names"].items()},
            total=int(data.get("total") or 0), history=bool(data.get("history", True)),
            overridden=int(data.get("overridden") or len(data["overrides"])),
        )  # fmt: skip


def _target_spec(data: dict[str, Any]) -> TargetSpec:
    return TargetSpec(
        failure_threshold=int(data["failure_threshold"]),
        success_threshold=int(data["success_threshold"]),
        notify=tuple(data["notify"]),
        degraded_latency=data.get("degraded_latency"),
        cert_warn_days=data.get("cert_warn_days"),
    )


def build_spec(
    set_name: str, probe_set: ProbeSet, targets: Iterable[Target], *, created_at: float
) -> RunSpec:
    """The spec of one run of *probe_set* over *targets* (already validated)."""
    builder = SpecBuilder(set_name, probe_set)
    builder.add(targets)
    return builder.build(created_at=created_at)


class SpecBuilder:
    """A spec built a chunk of targets at a time, so the targets themselves need not be
    kept (a 100,000-target set held every model, ~220 MB, for its spec)."""

    def __init__(self, set_name: str, probe_set: ProbeSet) -> None:
        self._set = set_name
        self._probe_set = probe_set
        self._defaults = TargetSpec(probe_set.failure_threshold, probe_set.success_threshold,
                                    tuple(probe_set.notify))  # fmt: skip
        self._overrides: dict[str, TargetSpec] = {}
        self._names: dict[str, tuple[str, str]] = {}

    def add(self, targets: Iterable[Target]) -> None:
        defaults = self._defaults
        for target in targets:
            self._names[target.key] = (target.name, target.url)
            if _like_defaults(target):
                continue  # most targets of a set: no spec of their own to build and compare
            own = TargetSpec(
                failure_threshold=target.failure_threshold or defaults.failure_threshold,
                success_threshold=target.success_threshold or defaults.success_threshold,
                notify=defaults.notify if target.notify is None else tuple(target.notify),
                degraded_latency=target.expect.degraded_latency,
                cert_warn_days=target.expect.cert_warn_days,
            )
            if own != defaults:
                self._overrides[target.key] = own

    def build(self, *, created_at: float) -> RunSpec:
        probe_set = self._probe_set
        return RunSpec(
            set=self._set, locations=probe_set.location_names, quorum=probe_set.effective_quorum,
            created_at=created_at, deadline_at=created_at + probe_set.effective_deadline,
            defaults=self._defaults, overrides=self._overrides, names=self._names,
            total=len(self._names), history=probe_set.history,
            overridden=len(self._overrides),
        )  # fmt: skip


def _like_defaults(target: Target) -> bool:
    """True when *target* sets nothing the spec keeps per target (its spec is the set's)."""
    expect = target.expect
    return (not target.failure_threshold and not target.success_threshold
            and target.notify is None and expect.degraded_latency is None
            and expect.cert_warn_days is None)  # fmt: skip
