"""Redis memory against its limit: the warning ``opsq up`` logs and ``/readyz`` reports.

opsq's Redis runs with ``maxmemory-policy noeviction`` (evicting a queue would lose
work), so when it reaches ``maxmemory`` every write is refused, the queues' included,
and probing stops. The time to act is before that: past :data:`WARN_RATIO` of the limit
``opsq up`` logs a warning (once per crossing, and a line when it is back below), and
every ``/readyz`` (``opsq up``, workers) reports the figures. Readiness does not fail on
it: the processes are still doing their job, and a full Redis is already reported by
the errors its refused writes cause.

``maxmemory 0`` (no limit, the server's default) is compared with the machine's memory
(``total_system_memory``) instead, since that is where the server will stop.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import redis

from opsq.core.errors import OpsqError
from opsq.core.redact import redact_url
from opsq.core.redis_errors import redis_errors

log = logging.getLogger(__name__)

WARN_RATIO = 0.8
CHECK_INTERVAL_S = 15.0


@dataclass(frozen=True)
class MemoryReport:
    used: int
    limit: int
    limit_source: str
    """``maxmemory``, or ``system memory`` when maxmemory is 0 (unlimited)."""

    @property
    def ratio(self) -> float:
        return self.used / self.limit if self.limit > 0 else 0.0

    @property
    def high(self) -> bool:
        return self.ratio >= WARN_RATIO

    def to_dict(self) -> dict[str, Any]:
        return {
            "used_bytes": self.used,
            "limit_bytes": self.limit,
            "limit": self.limit_source,
            "used_ratio": round(self.ratio, 4),
            "high": self.high,
        }

    def describe(self) -> str:
        return (
            f"Redis uses {self.used / 2**20:,.0f} MiB, {self.ratio:.0%} of its "
            f"{self.limit_source} ({self.limit / 2**20:,.0f} MiB)"
        )


def read_memory(client: redis.Redis[Any]) -> MemoryReport:
    """``INFO memory`` as a report (raises redis-py's errors)."""
    info = client.info("memory")
    used, maxmemory = int(info["used_memory"]), int(info.get("maxmemory", 0))
    if maxmemory > 0:
        return MemoryReport(used, maxmemory, "maxmemory")
    return MemoryReport(used, int(info.get("total_system_memory", 0)), "system memory")


def report_for(url: str) -> dict[str, Any]:
    """The ``/readyz`` entry: the figures, or why they could not be read."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        with redis_errors("read memory", where=redact_url(url)):
            return read_memory(client).to_dict()
    except OpsqError as exc:
        return {"error": str(exc)}
    finally:
        client.close()


class MemoryWatch:
    """Check every *interval* seconds in a daemon thread; warn on crossing the ratio."""

    def __init__(self, url: str, interval: float = CHECK_INTERVAL_S) -> None:
        self.url = url
        self.interval = interval
        self._stop = threading.Event()
        self._warned = False
        self._last: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._loop, name="redis-memory", daemon=True)

    def start(self) -> MemoryWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def report(self) -> dict[str, Any]:
        """The latest check (read fresh when none has run yet)."""
        return self._last or report_for(self.url)

    def check(self) -> None:
        """One check: log a warning when memory crosses the ratio, a line when it is back."""
        client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        try:
            with redis_errors("read memory"):
                memory = read_memory(client)
        except OpsqError:
            return  # an outage is reported by everything else that talks to Redis
        finally:
            client.close()
        self._last = memory.to_dict()
        if memory.high and not self._warned:
            log.warning(
                "%s: past %.0f%%. Writes (queues included) are refused at the limit: "
                "lower runs.retention (beat runs first) or raise maxmemory",
                memory.describe(), WARN_RATIO * 100,
            )  # fmt: skip
        elif self._warned and not memory.high:
            log.warning("%s: back below %.0f%%", memory.describe(), WARN_RATIO * 100)
        self._warned = memory.high

    def _loop(self) -> None:
        while True:
            self.check()
            if self._stop.wait(self.interval):
                return
