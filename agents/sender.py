"""The sender: queue of batches → pipelined XADD → checkpoint advance.

One thread owns the Redis connection. It takes every batch waiting in the bounded
queue (up to a pipeline's worth), sends them as one pipelined round trip, and only
after Redis replied moves each file's checkpoint to the end of its last acknowledged
batch. If the round trip fails (Redis down, restarting, answering OOM under
``noeviction``) the same batches are sent again after a full-jitter backoff
(:mod:`opsq.core.backoff`): the queue fills, readers pause (``block``) or drop and
count (``drop``), and the checkpoint stays where Redis last acknowledged. A retried
pipeline may have been partly applied; the duplicates carry the same record ids and
the consumer dedupes them (at-least-once, never at-most-once). A reply no retry can
fix (``WRONGTYPE`` on the stream key, ``WRONGPASS``) ends the sender, and the agent
exits with an error, instead of retrying forever.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from agents.checkpoint import CheckpointStore
from agents.lines import Batch
from agents.resp import RespClient
from opsq.core.backoff import Backoff
from opsq.core.config.logs import AgentSettings
from opsq.core.errors import RedisCommandError, RedisUnavailable
from opsq.core.metrics import logs_agent as metrics

log = logging.getLogger(__name__)

PIPELINE_ENTRIES = 64
"""Entries per round trip: ~64 x 2000 lines; more gains nothing measurable."""
PIPELINE_BYTES = 2 * 1024 * 1024
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
TAKE_TIMEOUT_S = 0.1


class Sender(threading.Thread):
    def __init__(
        self,
        client_factory: Callable[[], RespClient],
        stream: str,
        batches: queue.Queue[Batch],
        store: CheckpointStore,
        cfg: AgentSettings,
    ) -> None:
        super().__init__(name="opsq-agent-sender", daemon=True)
        self.client = client_factory()
        self.stream = stream
        self.batches = batches
        self.store = store
        self.cfg = cfg
        self._closing = threading.Event()
        self._abort = threading.Event()
        self._deadline = float("inf")
        self._unflushed_lines = 0
        self._last_flush = time.monotonic()

    # --- lifecycle --------------------------------------------------------------------
    def close(self, grace: float) -> None:
        """Send what is queued for at most *grace* seconds, then stop (readers stopped)."""
        self._deadline = time.monotonic() + grace
        self._closing.set()
        self.join(grace + 1.0)
        if self.is_alive():
            self._abort.set()
            self.join(5.0)

    def run(self) -> None:
        try:
            self._run()
        except RedisCommandError as exc:  # WRONGTYPE, WRONGPASS: no wait fixes it
            metrics.SEND_ERRORS.inc()
            log.error("XADD refused for good, stopping the agent: %s", exc)

    def _run(self) -> None:
        try:
            while not self._abort.is_set():
                batches = self._take()
                if not batches:
                    if self._closing.is_set():
                        break
                    self._maybe_flush()
                    continue
                if not self._send_until_acked(batches):
                    break
                self._acked(batches)
        finally:
            self.store.flush()
            self.client.close()

    # --- taking and sending -----------------------------------------------------------
    def _take(self) -> list[Batch]:
        try:
            first = self.batches.get(timeout=TAKE_TIMEOUT_S)
        except queue.Empty:
            return []
        out, size = [first], len(first.fields[b"data"])
        while len(out) < PIPELINE_ENTRIES and size < PIPELINE_BYTES:
            try:
                batch = self.batches.get_nowait()
            except queue.Empty:
                break
            out.append(batch)
            size += len(batch.fields[b"data"])
        return out

    def _send_until_acked(self, batches: list[Batch]) -> bool:
        """True once Redis acknowledged; False if the shutdown deadline ran out first."""
        backoff = Backoff(base=BACKOFF_START_S, cap=BACKOFF_MAX_S)
        while True:
            try:
                self._xadd(batches)
            except RedisUnavailable as exc:
                metrics.SEND_ERRORS.inc()
                delay = backoff.next()
                log.warning("XADD failed, retrying in %.1fs: %s", delay, exc)
            else:
                return True
            if time.monotonic() + delay > self._deadline or self._abort.wait(delay):
                log.warning("shutdown grace over with %d entries unacknowledged", len(batches))
                return False

    def _xadd(self, batches: list[Batch]) -> None:
        stream = self.stream.encode()
        commands = [xadd(stream, batch.fields) for batch in batches]
        if self.cfg.maxlen is not None:
            # Exact XTRIM after the adds: its reply is how many entries the cap removed.
            commands.append([b"XTRIM", stream, b"MAXLEN", b"=", str(self.cfg.maxlen).encode()])
        replies = self.client.execute(commands)
        trimmed = replies[-1]
        if self.cfg.maxlen is not None and isinstance(trimmed, int) and trimmed:
            metrics.ENTRIES_TRIMMED.inc(trimmed)

    # --- after the ack ----------------------------------------------------------------
    def _acked(self, batches: list[Batch]) -> None:
        lines = 0
        for batch in batches:
            self.store.advance(batch.fid, batch.end)
            lines += batch.lines
        metrics.ENTRIES_SENT.inc(len(batches))
        self._unflushed_lines += lines
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        now = time.monotonic()
        due = now - self._last_flush >= self.cfg.checkpoint_every
        if self._unflushed_lines >= self.cfg.checkpoint_every_lines or due:
            self.store.flush()
            self._unflushed_lines = 0
            self._last_flush = now


def xadd(stream: bytes, fields: dict[bytes, bytes]) -> list[bytes]:
    command = [b"XADD", stream, b"*"]
    for key, value in fields.items():
        command += (key, value)
    return command
