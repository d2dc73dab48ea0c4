"""Targets files at the speed of the engine: read once, validate in bulk, encode per batch.

``opsq probe`` and beat's ``opsq.probe_set`` turn a targets file (YAML, or JSON for
generated inventories; the schema of :class:`~opsq.core.config.probes.TargetsFile`)
into the batches of a run here. Stages, each measured on the 2-core dev VM:

1. **Read** with :func:`~opsq.core.loading.read_document` (libyaml or orjson, the
   garbage collector paused); a YAML file above :data:`STREAM_BYTES` an item at a time
   (:mod:`opsq.core.yamlstream`), validated and encoded as it is read, so a 100,000-target
   file needs ~60 MB instead of ~320 MB.
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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from opsq.core import yamlstream
from opsq.core.config.base import Section, config_dir
from opsq.core.config.probes import ProbeSpec, Target, merge_defaults
from opsq.core.errors import ConfigError
from opsq.core.loading import (
    describe_problem,
    paused_gc,
    read_document,
    read_text,
    yaml_error,
)
from opsq.core.redact import redact_url
from opsq.core.yamlstream import MappingStream

TARGETS: TypeAdapter[list[Target]] = TypeAdapter(list[Target])
"""Validates (and dumps) a list of targets in one call: the CLI, beat and the worker."""
MAX_PROBLEMS = 50
"""A file with thousands of bad entries reports this many, then how many more."""
STREAM_BYTES = 2 * 2**20
"""YAML files from this size (~35,000 targets) are read an item at a time: 100k targets
peak at ~60 MB instead of ~320 MB, for 12% more CPU (2x at 10k, hence the threshold)."""


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


Collector = Callable[[list[Target]], None]
"""Receives each validated chunk of targets, in file order (beat's monitor builds its
spec from them); the chunk is dropped afterwards, so keep only what you need."""


def load_batches(
    path: Path, batch_size: int, *, collect: Collector | None = None
) -> list[EncodedBatch]:
    """Read, validate and encode a targets file, or raise ConfigError naming every problem.

    Relative paths inside the file are relative to the file's directory. *collect*, if
    given, receives each validated chunk (beat's monitor needs them; the CLI does not).
    A YAML file above :data:`STREAM_BYTES` is read an item at a time
    (:mod:`opsq.core.yamlstream`) so memory stays bounded.
    """
    with config_dir(path.parent.absolute()):
        stream = _stream(path) if path.suffix.lower() != ".json" else None
        if stream is None:
            return encode_batches(read_document(path), batch_size, source=str(path),
                                  collect=collect)  # fmt: skip
        try:
            return _encode_stream(stream, batch_size, str(path), collect)
        except yaml.YAMLError as exc:
            raise yaml_error(path, exc) from exc


def encode_batches(
    data: dict[str, Any], batch_size: int, *, source: str, collect: Collector | None = None
) -> list[EncodedBatch]:
    """Validate a parsed targets document in chunks and encode each chunk as a batch."""
    with paused_gc():
        shape = _validated_shape(data, source)
        return _encode(shape.defaults, iter(shape.targets), batch_size, source, collect)


def _encode(
    defaults: dict[str, Any], entries: Iterator[Any], size: int, source: str,
    collect: Collector | None,
) -> list[EncodedBatch]:  # fmt: skip
    batches: list[EncodedBatch] = []
    problems: list[str] = []
    for offset, chunk, chunk_problems in _validated_chunks(defaults, entries, size):
        problems.extend(chunk_problems)
        if not problems:
            blob = TARGETS.dump_json(chunk, exclude_defaults=True)
            batches.append(EncodedBatch(offset, len(chunk), blob))
            if collect is not None:
                collect(chunk)
    if problems:
        raise ConfigError(_report(source, problems))
    return batches


def _stream(path: Path) -> MappingStream | None:
    """A stream over a large YAML targets file, or None to read the document whole.

    Streamed only when ``defaults`` cannot come after ``targets`` (the entries are merged
    with the defaults as they are read), which a text search shows cheaply."""
    try:
        if not yamlstream.AVAILABLE or path.stat().st_size < STREAM_BYTES:
            return None
    except OSError:
        return None  # the whole-document read says what is wrong with the file
    text = read_text(path)
    start = text.find("targets")
    if start < 0 or text.find("defaults", start) >= 0:
        return None
    stream = MappingStream(text, "targets")
    try:
        return stream if stream.open() else None
    except yaml.YAMLError:
        return None  # the whole-document read reports it with its position


def _encode_stream(
    stream: MappingStream, size: int, source: str, collect: Collector | None
) -> list[EncodedBatch]:
    with paused_gc():
        shape = _validated_shape({**stream.before, "targets": [None]}, source)
        batches = _encode(shape.defaults, stream.items(), size, source, collect)
        # What came after the list (unknown keys), and an empty list, fail as usual.
        _validated_shape({**stream.before, **stream.after, "targets": [None] * stream.count},
                         source)  # fmt: skip
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
    defaults: dict[str, Any], entries: Iterator[Any], size: int
) -> Iterator[tuple[int, list[Target], list[str]]]:
    """(offset, targets, problems) per chunk; uniqueness is checked across chunks."""
    seen: set[str] = set()
    offset = 0
    while raw := list(islice(entries, size)):
        merged = [merge_defaults(defaults, e) for e in raw]
        problems: list[str] = []
        try:
            chunk = list(enumerate(TARGETS.validate_python(merged)))
        except ValidationError as exc:
            errors = exc.errors()
            names = {"targets": _Window(offset, raw)}  # entry names for the messages
            problems = [describe_problem(_at(("targets", offset), e), names) for e in errors]
            chunk = _valid_entries(merged, {e["loc"][0] for e in errors})
        for index, target in chunk:
            if target.key in seen:
                problems.append(_duplicate(offset + index, target, _Window(offset, raw)))
            seen.add(target.key)
        yield offset, [target for _, target in chunk], problems
        offset += len(raw)


class _Window(list[Any]):
    """One chunk's raw entries, indexed as in the whole file (for error messages)."""

    def __init__(self, offset: int, entries: list[Any]) -> None:
        super().__init__(entries)
        self.offset = offset

    def __len__(self) -> int:
        return self.offset + super().__len__()

    def __getitem__(self, index: Any) -> Any:
        return super().__getitem__(index - self.offset) if index >= self.offset else None


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


def _duplicate(index: int, target: Target, window: _Window) -> str:
    err: ErrorDetails = {
        "type": "value_error",
        "loc": ("targets", index),
        "msg": f"target {target.name!r} with url {redact_url(target.url)} appears twice",
        "input": None,
    }
    return describe_problem(err, {"targets": window})


def _report(source: str, problems: list[str]) -> str:
    shown = problems[:MAX_PROBLEMS]
    more = len(problems) - len(shown)
    tail = [f"  ... and {more} more"] if more else []
    return "\n".join([f"{source}: {len(problems)} problem(s):", *shown, *tail])
