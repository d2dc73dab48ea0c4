"""Shared core: settings, Redis key names, metrics, errors, task signatures.

Everything above (engines, ``tasks``, ``producers``, ``agents``, the CLI) depends on
this package; it depends on none of them (enforced by import-linter).
"""
