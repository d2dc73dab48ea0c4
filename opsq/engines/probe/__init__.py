"""The probe engine: HTTP(S), TCP and DNS probes with deadlines, retries and phases.

Plain Python and asyncio, no Celery: the Celery task, the CLI and the benchmark are
thin adapters over :class:`ProbeEngine`. Input is :class:`opsq.core.config.probes.Target`
(validated before any work starts); output is :class:`ProbeResult`, JSON-safe.
"""

from opsq.engines.probe.deadline import Deadline
from opsq.engines.probe.engine import ProbeEngine, RateLimiter, ResultCallback, run_probes
from opsq.engines.probe.result import (
    ERROR_KIND_MEANINGS,
    ERROR_KINDS,
    PHASES,
    ErrorKind,
    ProbeResult,
)

__all__ = [
    "ERROR_KINDS",
    "ERROR_KIND_MEANINGS",
    "PHASES",
    "Deadline",
    "ErrorKind",
    "ProbeEngine",
    "ProbeResult",
    "RateLimiter",
    "ResultCallback",
    "run_probes",
]
