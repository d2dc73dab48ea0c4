"""One run of a probe set: submitted by beat or by hand, finished once by whoever is first.

A set run is an ordinary run (:mod:`opsq.core.runs`) plus the monitor's spec
(:mod:`.spec`). Beat's ``opsq.probe_set`` and ``opsq probe --set NAME`` both submit it
with :func:`submit_set`, so a run by hand updates target state exactly as a beat run
does: the spec is registered first (a fast worker may complete the run before the
submit returns), then every batch is pushed, to each location's queue, in one
transaction, each copy expiring at the run's deadline (a location still queued then
is ``missing``, not late).

:func:`finish` applies a run's verdicts when it is complete, or at its deadline with
whatever arrived. The worker that writes the last result calls it, the alerts tick
calls it for runs past their deadline, and ``opsq probe --set --wait`` calls it at the
deadline too, so a by-hand run with a stopped location is applied without beat. Any
of them may race: :meth:`.store.MonitorStore.apply` applies a run once.

:func:`finish_part` applies each batch of a single-location set run as soon as its
worker has recorded it, from the results in that worker's memory: judging and
recording 3,000 targets after the last result cost ~160 ms, serial, at the end of a
run that probed them in ~650 ms. Now that work overlaps the probing of later batches
and the run's end has only its last batch left. A target is still applied once
(the run keeps the set of targets it applied); :func:`finish` applies whatever no
batch did.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsq.core.config.probes import ProbeSet, Target
from opsq.core.errors import ConfigError
from opsq.core.runs import Kind, Progress, RunStore, Submitted, plan_run
from opsq.core.settings import Settings, check_notifier_refs
from opsq.core.targets import Collector, EncodedBatch, encode_targets, load_batches
from opsq.engines.monitor.spec import RunSpec, SpecBuilder, TargetSpec
from opsq.engines.monitor.store import ApplyOutcome, MonitorStore


@dataclass(frozen=True)
class SetRun:
    """A submitted set run and the spec the monitor judges it by."""

    submitted: Submitted
    spec: RunSpec

    @property
    def run_id(self) -> str:
        return self.submitted.run_id


def probe_set(settings: Settings, name: str) -> ProbeSet:
    """The configured set *name*, or ConfigError naming the field and the known sets."""
    found = settings.probes.sets.get(name)
    if found is None:
        known = ", ".join(sorted(settings.probes.sets)) or "none configured"
        raise ConfigError(f"probe set {name!r} is not defined under probes.sets of the "
                          f"config (known: {known})")  # fmt: skip
    return found


def submit_set(
    settings: Settings, name: str, runs: RunStore, *, kind: Kind, now: float | None = None
) -> SetRun:
    """Load, validate and submit one run of probe set *name*; ConfigError when its file
    or a target's notifier is bad (nothing is enqueued then)."""
    config = probe_set(settings, name)
    builder = SpecBuilder(name, config)
    batches = set_batches(config, settings.probes.batch_size,
                          checked_targets(name, settings, builder.add))  # fmt: skip
    spec = builder.build(created_at=time.time() if now is None else now)
    kept = settings.runs.retention
    retention = kept.beat if kind == "beat" else kept.on_demand
    plan = plan_run(
        batches, kind=kind, retention=retention, locations=config.locations,
        expires=spec.deadline_at if config.locations else None,
        source=str(config.file or f"probes.sets.{name}"), probe_set=name,
        deadline_at=f"{spec.deadline_at:.3f}",
    )  # fmt: skip
    MonitorStore(runs.client, settings.alerts).register(plan.run_id, spec)
    return SetRun(runs.submit(plan), spec)


def set_batches(config: ProbeSet, batch_size: int, collect: Collector) -> list[EncodedBatch]:
    """The set's targets, validated and encoded; *collect* gets them a chunk at a time."""
    if config.file is None:  # inline targets: validated with the config
        targets = list(config.targets or [])
        collect(targets)
        return encode_targets(targets, batch_size)
    return load_batches(Path(config.file), batch_size, collect=collect)


def checked_targets(name: str, settings: Settings, then: Collector) -> Collector:
    """A collector that refuses (ConfigError) a target naming an unknown notifier (a file
    set's targets may name notifiers too), then passes the chunk on to *then*."""
    seen = 0

    def check(targets: list[Target]) -> None:
        nonlocal seen
        where = f"{settings.probes.sets[name].file} (set {name}): field targets"
        for index, target in enumerate(targets, start=seen):
            try:
                check_notifier_refs(target.notify or (), settings.alerts.notifiers,
                                    f"{where}[{index}] (name {target.name!r}).notify")  # fmt: skip
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        seen += len(targets)
        then(targets)

    return check


@dataclass(frozen=True)
class Finished:
    """What :func:`finish` did to one run."""

    spec: RunSpec
    progress: Progress
    outcome: ApplyOutcome


def finish(
    monitor: MonitorStore, runs: RunStore, run_id: str, *, at_deadline: bool, now: float
) -> Finished | None:
    """Apply a complete run, or an incomplete one *at_deadline*, once; None when the run
    is no set run (or applied and forgotten already) or not complete yet. The caller
    sends the run's outbox afterwards, whatever this returns."""
    # Every batch of every run asks; only the last one of a set run applies it. The whole
    # spec (~280 KB for 3,000 targets) is read only when a target is left to apply.
    head = monitor.head(run_id) or monitor.spec(run_id)  # (a run registered by 0.x: no head)
    if head is None:  # no set run, or applied (and its spec deleted)
        return None
    progress = runs.progress(run_id)
    if not progress.complete and not at_deadline:
        return None
    if monitor.parts_done(run_id) >= head.size > 0:  # every target applied batch by batch
        return Finished(head, progress, monitor.apply(run_id, head, [], now=now))
    spec = head if head.names else monitor.spec(run_id)
    if spec is None:  # applied meanwhile
        return None
    outcome = monitor.apply(run_id, spec, runs.results(run_id), now=now)
    return Finished(spec, progress, outcome)


@dataclass(frozen=True)
class PartFinished:
    """What :func:`finish_part` did to one batch of a set run."""

    spec: RunSpec
    owner: str
    """The batch's outbox (its notifications)."""
    outcome: ApplyOutcome


def part_owner(run_id: str, batch_id: str) -> str:
    """The outbox of one batch of a run."""
    return f"{run_id}#{batch_id}"


_READ = RunSpec("", (), 0, 0.0, 0.0, TargetSpec(0, 0, ()))
"""``head`` not given: :func:`finish_part` reads it."""


def finish_part(
    monitor: MonitorStore, run_id: str, batch_id: str, results: Sequence[Mapping[str, Any]], *,
    now: float, head: RunSpec | None = _READ,
) -> PartFinished | None:  # fmt: skip
    """Apply one batch of a set run from the results its worker just recorded, so the
    run's end has (nearly) nothing left to apply; None when the run is no set run, or
    is probed from several locations (a target's verdict needs every location's result:
    those runs are applied at their end, or deadline, by :func:`finish`)."""
    if not results:
        return None
    head = monitor.head(run_id) if head is _READ else head
    if head is None or len(head.locations) > 1:
        return None
    names = {f"{r['name']}|{r['url']}": (str(r["name"]), str(r["url"])) for r in results}
    owner = part_owner(run_id, batch_id)
    spec = monitor.batch_spec(run_id, head, names)
    outcome = monitor.apply_part(run_id, owner, spec, results, now=now)
    return PartFinished(head, owner, outcome)
