"""``opsq probe TARGETS.yaml`` and ``opsq runs show|list``.

The targets file is validated completely before anything is enqueued (a bad entry
exits 2 naming file, entry and field). Exit codes: 0 every target up, 1 any target
down (or still pending when ``--timeout`` ran out, or Redis unreachable), 2 bad input.
Machine-readable output (``--output json``) goes to stdout alone; the run id and the
progress bar go to stderr so they never corrupt it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click
import orjson

from opsq.cli.options import common_options, positive_seconds, settings_from
from opsq.core.durations import format_duration
from opsq.core.logsetup import setup_logging
from opsq.core.runs import Progress, RunStore, RunView
from producers.probes import ProbeProducer

OUTPUT = click.option(
    "--output", type=click.Choice(["table", "json"]), default="table", help="Summary format."
)
PLAIN_PROGRESS_EVERY_S = 2.0
ERROR_WIDTH = 60
WRITE_CHUNK = 1 << 16
"""Streamed JSON is written in pieces of about this many bytes."""


@click.command()
@click.argument("targets_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "set_name", default=None, metavar="NAME",
              help="Run the configured probe set NAME instead (updates target state and "
                   "alerts, as beat's runs do).")  # fmt: skip
@click.option("--wait", is_flag=True, help="Wait for every result, then print the summary.")
@OUTPUT
@click.option(
    "--timeout", type=float, default=None, callback=positive_seconds,
    help="Stop waiting after S seconds.",
)  # fmt: skip
@common_options
def probe(
    targets_file: Path | None, set_name: str | None, wait: bool, output: str,
    timeout: float | None, **opts: Any,
) -> None:  # fmt: skip
    """Probe every target in TARGETS_FILE (or of probe set NAME) on the workers; print the
    run id (and summary)."""
    if (targets_file is None) == (set_name is None):
        raise click.UsageError("give a TARGETS_FILE or --set NAME (one of them)")
    settings = settings_from(**opts)
    setup_logging(settings.log_level, settings.log_format)
    producer = ProbeProducer(settings)
    try:
        if targets_file is not None:
            view = _probe_file(producer, targets_file, wait, output, timeout)
        else:  # --set NAME, by the check above
            view = _probe_set(producer, str(set_name), wait, output, timeout)
        if view is None:
            return
        _print_run(view, output)
    finally:
        producer.close()
    raise click.exceptions.Exit(exit_code(view.header))


def _probe_file(
    producer: ProbeProducer, targets_file: Path, wait: bool, output: str, timeout: float | None
) -> RunView | None:
    submitted = producer.submit_file(targets_file)
    if not wait:
        _print_submitted(submitted.run_id, submitted.total, submitted.batches, output)
        return None
    click.echo(
        f"run {submitted.run_id}: {submitted.total} targets in {submitted.batches} batches "
        f"(file read and validated in {producer.load_seconds:.2f}s)",
        err=True,
    )
    with _interruptible(submitted.run_id), _progress_reporter(submitted.total) as report:
        return producer.wait(submitted.run_id, timeout=timeout, on_progress=report)


def _probe_set(
    producer: ProbeProducer, name: str, wait: bool, output: str, timeout: float | None
) -> RunView | None:
    """A run of a configured set: with locations, every target from each of them."""
    run = producer.submit_set(name)
    submitted, locations = run.submitted, run.spec.locations
    if not wait:
        _print_submitted(submitted.run_id, submitted.total, submitted.batches, output)
        return None
    click.echo(
        f"run {submitted.run_id} of set {name}: {submitted.total} targets x "
        f"{len(locations)} location(s) ({', '.join(locations)}), quorum {run.spec.quorum}, "
        f"deadline in {format_duration(run.spec.deadline_at - run.spec.created_at)}",
        err=True,
    )
    total = submitted.total * len(locations)
    with _interruptible(submitted.run_id), _progress_reporter(total) as report:
        return producer.wait_set(run, timeout=timeout, on_progress=report)


@contextmanager
def _interruptible(run_id: str) -> Iterator[None]:
    """Ctrl-C stops waiting, not the run: say so, and where to find it (exit 130)."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: stopped waiting; run {run_id} goes on on the workers "
            f"(`opsq runs show {run_id}` shows it)",
            err=True,
        )
        raise click.exceptions.Exit(130) from None


def exit_code(header: dict[str, Any]) -> int:
    return 0 if header["down"] == 0 and header["pending"] == 0 else 1


def _print_submitted(run_id: str, total: int, batches: int, output: str) -> None:
    if output == "json":
        click.echo(json.dumps({"run_id": run_id, "total": total, "batches": batches}))
    else:
        click.echo(run_id)


@contextmanager
def _progress_reporter(total: int) -> Iterator[Callable[[Progress], None]]:
    """A rich progress bar on a terminal; a line every few seconds otherwise (CI logs)."""
    if sys.stderr.isatty():
        from rich.console import Console  # noqa: PLC0415 - only a terminal needs rich
        from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn  # noqa: PLC0415
        from rich.progress import Progress as Bar  # noqa: PLC0415

        with Bar(
            "probing", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        ) as bar:  # fmt: skip
            task = bar.add_task("probing", total=total)
            yield lambda p: bar.update(task, completed=p.done)
        return
    last = [0.0]

    def plain(progress: Progress) -> None:
        now = time.monotonic()
        if now - last[0] >= PLAIN_PROGRESS_EVERY_S or progress.complete:
            last[0] = now
            click.echo(f"progress: {progress.done}/{progress.total}", err=True)

    yield plain


def _print_run(view: RunView, output: str) -> None:
    if output == "json":
        sys.stdout.flush()
        write_json(view.header, view.results(), sys.stdout.buffer)
        return
    click.echo(render_table({**view.header, "results": view.results()}))


def write_json(header: dict[str, Any], results: Iterator[dict[str, Any]], out: IO[bytes]) -> None:
    """The summary as one JSON object, written as the results stream in (never one string).

    The header fields first, then ``results``, one result per line.
    """
    head = orjson.dumps(header, option=orjson.OPT_INDENT_2)
    pending = bytearray(head[: head.rindex(b"\n")] + b',\n  "results": [')
    separator = b"\n    "
    for result in results:
        pending += separator + orjson.dumps(result)
        separator = b",\n    "
        if len(pending) >= WRITE_CHUNK:
            out.write(pending)
            pending.clear()
    pending += b"\n  ]\n}\n" if separator != b"\n    " else b"]\n}\n"
    out.write(pending)
    out.flush()


def render_table(summary: dict[str, Any]) -> str:
    """The results (any iterable, read once) as aligned columns; CERT, the days left,
    only when some target used TLS; LOCATION for a run probed from several locations,
    with a MISSING row for a location that sent no result by the run's deadline."""
    locations: list[str] = summary.get("locations") or []
    past = summary.get("deadline_at") is not None and time.time() >= summary["deadline_at"]
    absent = "MISSING" if past else "pending"
    rows: list[tuple[str, ...]] = [
        ("NAME", "URL", "LOCATION", "STATE", "STATUS", "ATTEMPTS", "DURATION", "CERT", "ERROR")
    ]
    certs = False
    group: tuple[str, str] | None = None
    seen: set[str] = set()
    for r in summary["results"]:
        certs = certs or r.get("cert_days_left") is not None
        if locations and (r["name"], r["url"]) != group:
            rows.extend(_absent_rows(group, locations, seen, absent))
            group, seen = (r["name"], r["url"]), set()
        seen.add(str(r.get("location")))
        rows.append(_result_row(r))
    rows.extend(_absent_rows(group, locations, seen, absent))
    keep = [i for i in range(len(rows[0])) if (i != 2 or locations) and (i != 7 or certs)]
    rows = [tuple(row[i] for i in keep) for row in rows]
    pending = f", {summary['pending']} PENDING" if summary["pending"] else ""
    footer = (
        f"\nrun {summary['run_id']}: {summary['total']} targets, {summary['up']} up, "
        f"{summary['down']} down{pending} in {format_duration(summary['duration_s'])}"
    )
    if locations:
        footer += f" (each target from {len(locations)} locations: {', '.join(locations)})"
    return _columns(rows) + "\n" + footer


def _result_row(r: dict[str, Any]) -> tuple[str, ...]:
    days = r.get("cert_days_left")
    return (
        str(r["name"]),
        str(r["url"]),
        str(r.get("location") or "-"),
        "up" if r["up"] else "DOWN",
        "-" if r["status_code"] is None else str(r["status_code"]),
        str(r["attempts"]),
        format_duration(float(r["duration_s"] or 0)),
        "-" if days is None else f"{days:.1f}d",
        _shorten(r.get("error") or ""),
    )


def _absent_rows(
    group: tuple[str, str] | None, locations: list[str], seen: set[str], label: str
) -> list[tuple[str, ...]]:
    """Rows for the locations of one target that sent no result (yet)."""
    if group is None:
        return []
    return [(*group, loc, label, "-", "-", "-", "-", "") for loc in locations if loc not in seen]


def _columns(rows: Sequence[tuple[str, ...]]) -> str:
    """Rows as left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 1] + "…"


@contextmanager
def _run_store(opts: dict[str, Any]) -> Iterator[RunStore]:
    """The run store of the settings these options select, closed after use."""
    store = RunStore.from_url(settings_from(**opts).broker_url)
    try:
        yield store
    finally:
        store.close()


@click.group()
def runs() -> None:
    """Inspect probe runs stored in Redis (kept for runs.retention: a week, beat runs a day)."""


@runs.command()
@click.argument("run_id")
@OUTPUT
@common_options
def show(run_id: str, output: str, **opts: Any) -> None:
    """Print the summary of RUN_ID (partial while the run is in progress)."""
    with _run_store(opts) as store:
        view = store.open(run_id)
        if view is None:
            legacy = store.summary(run_id)  # a run stored by an older opsq
            if legacy is None:
                click.echo(f"error: run {run_id} not found (unknown or expired)", err=True)
                raise click.exceptions.Exit(1)
            header = {k: v for k, v in legacy.items() if k != "results"}
            _print_header_and(header, iter(legacy["results"]), output)
            raise click.exceptions.Exit(exit_code(header))
        _print_run(view, output)
    raise click.exceptions.Exit(exit_code(view.header))


def _print_header_and(
    header: dict[str, Any], results: Iterator[dict[str, Any]], output: str
) -> None:
    if output == "json":
        sys.stdout.flush()
        write_json(header, results, sys.stdout.buffer)
    else:
        click.echo(render_table({**header, "results": results}))


@runs.command(name="list")
@click.option("--limit", type=click.IntRange(1, 1000), default=20)
@OUTPUT
@common_options
def list_runs(limit: int, output: str, **opts: Any) -> None:
    """List recent runs, newest first: progress, up and down counts, duration and age."""
    with _run_store(opts) as store:
        recent = store.list_runs(limit)
    if output == "json":
        click.echo(json.dumps(recent, indent=2))
        return
    click.echo(render_runs(recent, time.time()))


def render_runs(runs: list[dict[str, Any]], now: float) -> str:
    """One line per run: id, done/total, up, down, duration (so far), age, source."""
    header = ("RUN", "DONE", "UP", "DOWN", "DURATION", "AGE", "SOURCE")
    rows = [header]
    for run in runs:
        running = "" if run["finished_at"] is not None else " (running)"
        source = run["source"] if not run["probe_set"] else f"set {run['probe_set']}"
        rows.append(
            (
                run["run_id"],
                f"{run['done']}/{run['total']}",
                str(run["up"]),
                str(run["down"]),
                format_duration(run["duration_s"]) + running,
                format_duration(max(0.0, now - run["created_at"])) + " ago",
                source,
            )
        )
    return _columns(rows)
