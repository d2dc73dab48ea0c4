"""Typed configuration models, one module per area (probes, cleanup, logs, ...).

A config error must surface in ``opsq config check`` (and at the start of every
command, exit 2) with the file, the field and the fix, never hours later in a worker,
beat or agent. So **all validation lives in these models**, never in a CLI command or
an engine constructor. When you add a setting:

1. **Pick a type that refuses what would fail at run time.**
   - :data:`~opsq.core.durations.Duration` for any time span (``500ms``, ``2s``, ``1h``):
     finite, not negative, with a fix; add ``Field(gt=0)`` when zero makes no sense.
   - :mod:`opsq.core.config.fields`: ``Regex`` (``BytesRegex`` when matched against raw
     bytes), ``RedisUrl``, ``HttpUrl`` (sinks, webhooks), ``Host`` (bind addresses),
     ``ExistingFile`` (a file opsq will read; relative to the config file, stored
     absolute).
   - ``Literal[...]`` for a choice, ``Annotated[int, Field(ge=..., le=...)]`` for a range.
     Every section derives from :class:`~opsq.core.config.base.Section`: unknown keys
     are errors and float fields refuse ``.inf``/``.nan``.
2. **A rule no type expresses** goes in a ``field_validator`` or
   ``model_validator(mode="after")`` that raises
   :class:`~opsq.core.config.base.Invalid` (``Invalid("what is wrong", fix="what to
   write")``). :func:`opsq.core.loading.describe_errors` prints it as
   ``<file>: field a.b.c: what is wrong (fix: what to write)``. Pydantic's own errors
   (ranges, literals, unknown keys) get their fix from the error type.
3. **The default is stated once**, on the model field. There is no other defaults
   file; engines take the settings model, or default a parameter to
   ``default_of(Model, "field")`` (:mod:`opsq.core.config.base`) rather than repeating
   the number. ``opsq config show --defaults`` prints them all.
4. **A test per rule**: write the bad YAML, run ``opsq config check`` and assert exit 2
   and a message naming the field and the fix (see ``tests/config``).
"""
