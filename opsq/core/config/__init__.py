"""Typed configuration models, one module per area (probes, cleanup, logs, ...).

Every model forbids unknown fields and fails at construction with a message naming the
field; :mod:`opsq.core.loading` turns pydantic's errors into "file, field, fix".
"""
