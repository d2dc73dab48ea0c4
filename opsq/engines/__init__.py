"""Engines: plain-Python cores (probe engine, cleanup planner/executor).

No Celery import here: Celery tasks and CLI commands are thin adapters over these.
"""
