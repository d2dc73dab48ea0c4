"""Read YAML (and JSON) files and turn validation failures into "file, field, fix" messages.

Every user-facing input (the main config, targets files) goes through here, so every
bad input fails the same way: a :class:`ConfigError` the CLI prints before exiting 2.

Loading is on the CLI's critical path (``opsq probe`` reads 10,000-100,000 targets
before the first batch can go out), so it is built for speed, each choice measured on
the 2-core dev VM with generated 10k/100k-target files:

- libyaml (``yaml.CSafeLoader``) when PyYAML was built with it, the pure-Python
  ``SafeLoader`` otherwise (same results, about 10x slower): 10k targets 1.6 s -> 0.15 s.
- The cyclic garbage collector is paused while a document is built. Its passes over
  the growing document made loading superlinear: 100k targets took 3.3-7.2 s with the
  collector on (even with opsq's relaxed thresholds) and 1.7-2.0 s paused. A document
  of plain dicts, lists and scalars has no cycles to collect.
- ``.json`` files are parsed with orjson (100k targets: 0.02-0.2 s, a fifth of the
  memory of the YAML document): the format for generated inventories.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from opsq.core.config.base import Invalid, config_dir
from opsq.core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader when available (``yaml.__with_libyaml__``), else pure Python."""

_FIXES = {
    "extra_forbidden": "remove it or check its spelling against the README's reference",
    "missing": "add it",
    "int_parsing": "use a whole number",
    "float_parsing": "use a number",
    "bool_parsing": "use true or false",
    "string_type": "use a string (quote it in YAML)",
    "list_type": "use a YAML list",
    "dict_type": "use a YAML mapping",
    "model_type": "use a YAML mapping",
    "too_short": "add at least one item",
}


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector (reference counting still frees memory)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_yaml(path: Path) -> dict[str, Any]:
    """Load a YAML mapping from *path* or raise ConfigError naming the file and problem."""
    return _mapping(path, _parse_yaml(path, read_text(path)), "YAML")


def read_document(path: Path) -> dict[str, Any]:
    """A ``.json`` file with orjson, anything else as YAML; the top level must be a mapping."""
    if path.suffix.lower() != ".json":
        return read_yaml(path)
    # A byte order mark (Windows tools write one) is allowed, as RFC 8259 section 8.1
    # lets parsers do and as YAML does; orjson refuses it.
    raw = read_text(path).removeprefix("\ufeff").encode("utf-8")
    if not raw.strip():
        raise ConfigError(f"{path}: the file is empty; expected a JSON object")
    try:
        with paused_gc():
            data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    return _mapping(path, data, "JSON")


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        with paused_gc():
            return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from exc


def yaml_error(path: Path, exc: yaml.YAMLError) -> ConfigError:
    """``path: not valid YAML at line L, column C: problem``."""
    where = ""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        where = f" at line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return ConfigError(f"{path}: not valid YAML{where}: {problem}")


def _mapping(path: Path, data: Any, kind: str) -> dict[str, Any]:
    noun = "a JSON object" if kind == "JSON" else "a YAML mapping"
    if data is None:
        raise ConfigError(f"{path}: the file is empty; expected {noun}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {noun} at the top level, got a {type(data).__name__}")
    return data


# Constraint errors: the fix is built from the constraint (pydantic's ctx).
_BOUND_FIXES = {
    "greater_than": "use a value above {gt}",
    "greater_than_equal": "use {ge} or more",
    "less_than": "use a value below {lt}",
    "less_than_equal": "use {le} or less",
    "finite_number": "use a finite number (not .inf or .nan)",
    "literal_error": "use one of {expected}",
    "string_pattern_mismatch": "match the pattern {pattern}",
}


def describe_errors(exc: ValidationError, source: str, data: object = None) -> str:
    """One line per problem: ``source: field a.b.c: message (fix: ...)``.

    The fix comes from the validator (:class:`~opsq.core.config.base.Invalid`), else
    from the error type.
    """
    lines = [f"{source}: {exc.error_count()} problem(s):"]
    lines.extend(describe_problem(err, data) for err in exc.errors())
    return "\n".join(lines)


def describe_problem(err: ErrorDetails, data: object = None) -> str:
    """``  field a.b.c: message (fix: ...)`` for one of pydantic's error dicts."""
    loc = _location(err["loc"], data)
    fix = _fix(err)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"  {loc}: {msg}" + (f" (fix: {fix})" if fix else "")


def _fix(err: ErrorDetails) -> str | None:
    ctx = err.get("ctx") or {}
    raised = ctx.get("error")
    if isinstance(raised, Invalid):
        return raised.fix
    template = _BOUND_FIXES.get(err["type"])
    if template is not None:
        return template.format(**ctx)
    return _FIXES.get(err["type"])


def _location(loc: tuple[int | str, ...], data: object) -> str:
    """``('targets', 3, 'expect')`` -> ``targets[3] (name 'api') field expect``."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            entry = node[item] if isinstance(node, list) and item < len(node) else None
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                label += f" (name {entry['name']!r})"
            parts.append(label)
            node = entry
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    path = "".join(parts) or "(top level)"
    return f"field {path}"


def validate_file(model: type[M], path: Path) -> M:
    """Read *path* (YAML, or JSON by suffix) and validate it as *model*, or raise ConfigError.

    Relative paths inside the file are relative to the file's directory.
    """
    data = read_document(path)
    try:
        with config_dir(path.parent.absolute()):
            return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, str(path), data)) from exc
