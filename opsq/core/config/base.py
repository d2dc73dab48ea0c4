"""Base model for every config section, the error validators raise, and the config's
directory (what relative paths in it are relative to).

- :class:`Section`: unknown keys are errors (a typo must not be silently ignored), the
  model is frozen, and ``inf``/``nan`` are refused for every float field.
- :class:`Invalid`: what a validator raises. It carries the fix separately from the
  problem, so :func:`opsq.core.loading.describe_errors` prints every failure the same
  way: ``field a.b: <problem> (fix: <fix>)``.
- :func:`config_dir` / :func:`resolve_path`: a relative path in a config file is
  relative to that file, whichever directory the process runs in (``opsq up``, beat and
  the workers do not share a working directory with the user's shell).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. Unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )


def default_of(model: type[BaseModel], field: str) -> Any:
    """A field's default, for an engine constructor that takes the value directly:
    ``page_size: int = default_of(CleanupSettings, "page_size")`` states it once."""
    return model.model_fields[field].get_default(call_default_factory=True)


class Invalid(ValueError):
    """Raised by a validator: ``problem`` says what is wrong, ``fix`` what to write instead."""

    def __init__(self, problem: str, *, fix: str) -> None:
        super().__init__(problem)
        self.fix = fix


_CONFIG_DIR: ContextVar[Path | None] = ContextVar("opsq_config_dir", default=None)


@contextmanager
def config_dir(directory: Path | None) -> Iterator[None]:
    """Validate inside this block with relative paths resolved against *directory*."""
    token = _CONFIG_DIR.set(directory)
    try:
        yield
    finally:
        _CONFIG_DIR.reset(token)


def resolve_path(path: Path) -> Path:
    """*path* made absolute against the config file's directory (else the working one)."""
    path = path.expanduser()
    if path.is_absolute():
        return path
    return (_CONFIG_DIR.get() or Path.cwd()) / path
