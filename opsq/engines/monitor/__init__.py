"""Target state over time: verdicts by quorum, the state machine, transitions, alerts.

Plain Python (Redis through redis-py, no Celery). The pieces:

- :mod:`.verdict`: per-location results -> one verdict per target (quorum, missing);
- :mod:`.state`: the up/degraded/down state machine with thresholds (pure);
- :mod:`.spec`: what a set run carries for the monitor (thresholds, notifiers...);
- :mod:`.store`: exactly-once application of a run to Redis, transitions stream,
  verdicts stream, notification outbox; its docstring documents the Redis shape that
  consumers such as history rollups read;
- :mod:`.alerting`: which notifications a transition or a tick causes (pure);
- :mod:`.maintenance`: maintenance windows, one-off and cron with time zones (pure).
"""
