"""Producers: turn targets files, schedules and Kubernetes state into queued work.

They send tasks by name (:mod:`opsq.core.signatures`) and never import ``tasks``.
"""
