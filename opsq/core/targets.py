"""Targets files at the speed of the engine: read once, validate in bulk, encode per batch.

``opsq probe`` and beat's ``opsq.probe_set`` turn a targets file (YAML, or JSON for
generated inventories; the schema of :class:`~opsq.core.config.probes.TargetsFile`)
into the batches of a run here. Stages, each measured on the 2-core dev VM:

1. **Read** with :func:`~opsq.core.loading.read_document` (libyaml or orjson, the
   garbage collector paused).
2. **Validate in bulk**, one chunk of ``batch_size`` targets at a time, with one
   ``TypeAdapter(list[Target])`` call per chunk (no model-by-model loop). The file's
   ``defaults`` are merged exactly as ``TargetsFile`` merges them and ``(name, url)``
   must be unique across the whole file. Every problem is reported (up to
   :data:`MAX_PROBLEMS`), and once one is found nothing more is encoded: a bad file
   enqueues nothing.
3. **Encode** each validated chunk as its batch's JSON in one pydantic call (defaults
   left out; the worker re-applies them) and drop the models, so at most one batch of
   ``Target`` models is alive at a time (100,000 models are about 140 MB).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from opsq.core.config.base import Section, config_dir
from opsq.core.config.probes import ProbeSpec, Target, merge_defaults
from opsq.core.errors import ConfigError
from opsq.core.loading import describe_problem, paused_gc, read_document

TARGETS: TypeAdapter[list[Target]] = TypeAdapter(list[Target])
"""Validates (and dumps) a list of targets in one call: the CLI, beat and the worker."""
MAX_PROBLEMS = 50
"""A file with thousands of bad entries reports this many, then how many more."""


@dataclass(frozen=True)
class EncodedBatch:
    """One batch of a run: where it starts in the file and its targets as JSON."""

    offset: int
    count: int
    targets_json: bytes


class _Shape(Section):
    """The document around the entries (each entry is validated as a Target later)."""

    defaults: dict[str, Any] = Field(default_factory=dict)
    targets: Annotated[list[Any], Field(min_length=1)]


def load_batches(
    path: Path, batch_size: int, *, collect: list[Target] | None = None
) -> list[EncodedBatch]:
    """Read, validate and encode a targets file, or raise ConfigError naming every problem.

    Relative paths inside the file are relative to the file's directory. *collect*, if
    given, receives the validated targets (beat's monitor needs them; the CLI does not).
    """
    data = read_document(path)
    with config_dir(path.parent.absolute()):
        return encode_batches(data, batch_size, source=str(path), collect=collect)


def encode_batches(
    data: dict[str, Any], batch_size: int, *, source: str, collect: list[Target] | None = None
) -> list[EncodedBatch]:
    """Validate a parsed targets document in chunks and encode each chunk as a batch."""
    with paused_gc():
        shape = _validated_shape(data, source)
        batches: list[EncodedBatch] = []
        problems: list[str] = []
        for offset, chunk, chunk_problems in _validated_chunks(shape, data, batch_size):
            problems.extend(chunk_problems)
            if not problems:
                blob = TARGETS.dump_json(chunk, exclude_defaults=True)
                batches.append(EncodedBatch(offset, len(chunk), blob))
                if collect is not None:
                    collect.extend(chunk)
        if problems:
            raise ConfigError(_report(source, problems))
        return batches


def encode_targets(targets: Sequence[Target], batch_size: int) -> list[EncodedBatch]:
    """Batches of targets validated already (inline probe sets, targets built in code)."""
    return [
        EncodedBatch(start, len(chunk), TARGETS.dump_json(chunk, exclude_defaults=True))
        for start in range(0, len(targets), batch_size)
        for chunk in [list(targets[start : start + batch_size])]
    ]


def _validated_shape(data: dict[str, Any], source: str) -> _Shape:
    try:
        shape = _Shape.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            _report(source, [describe_problem(e, data) for e in exc.errors()])
        ) from exc
    try:
        ProbeSpec.model_validate(shape.defaults)
    except ValidationError as exc:
        lines = [describe_problem(_at(("defaults",), e), data) for e in exc.errors()]
        raise ConfigError(_report(source, lines)) from exc
    return shape


def _validated_chunks(
    shape: _Shape, data: dict[str, Any], size: int
) -> Iterator[tuple[int, list[Target], list[str]]]:
    """(offset, targets, problems) per chunk; uniqueness is checked across chunks."""
    seen: set[str] = set()
    entries = shape.targets
    for offset in range(0, len(entries), size):
        merged = [merge_defaults(shape.defaults, e) for e in entries[offset : offset + size]]
        problems: list[str] = []
        try:
            chunk = list(enumerate(TARGETS.validate_python(merged)))
        except ValidationError as exc:
            errors = exc.errors()
            problems = [describe_problem(_at(("targets", offset), e), data) for e in errors]
            chunk = _valid_entries(merged, {e["loc"][0] for e in errors})
        for index, target in chunk:
            if target.key in seen:
                problems.append(_duplicate(offset + index, target, data))
            seen.add(target.key)
        yield offset, [target for _, target in chunk], problems


def _valid_entries(merged: list[Any], bad: set[int | str]) -> list[tuple[int, Target]]:
    """The entries of a failed chunk that are valid on their own (for the duplicate check)."""
    return [(i, Target.model_validate(m)) for i, m in enumerate(merged) if i not in bad]


def _at(prefix: tuple[str | int, ...], err: ErrorDetails) -> ErrorDetails:
    """*err* with its location moved under *prefix* (a chunk's index becomes the file's)."""
    loc = list(err["loc"])
    if prefix and isinstance(prefix[-1], int) and loc and isinstance(loc[0], int):
        loc[0] += prefix[-1]
        prefix = prefix[:-1]
    return {**err, "loc": (*prefix, *loc)}


def _duplicate(index: int, target: Target, data: dict[str, Any]) -> str:
    err: ErrorDetails = {
        "type": "value_error",
        "loc": ("targets", index),
        "msg": f"target {target.name!r} with url {target.url} appears twice",
        "input": None,
    }
    return describe_problem(err, data)


def _report(source: str, problems: list[str]) -> str:
    shown = problems[:MAX_PROBLEMS]
    more = len(problems) - len(shown)
    tail = [f"  ... and {more} more"] if more else []
    return "\n".join([f"{source}: {len(problems)} problem(s):", *shown, *tail])
