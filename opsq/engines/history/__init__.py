"""History of every (set, target): raw verdicts, hourly and daily rollups, incidents.

Written by :class:`.recorder.HistoryRecorder` inside the monitor's transaction (so a
run's history is recorded exactly once, with the state it produced); read by
:mod:`.reader` (sans-I/O queries the web server and the CLI execute in pipelines).
The storage shape and its cost are described in :mod:`.recorder`.
"""
