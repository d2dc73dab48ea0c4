"""The sender: queue of batches -> one MULTI/EXEC of XADDs -> checkpoint advance.

One thread owns the Redis connection. It takes every batch waiting in the bounded
queue (up to a pipeline's worth) and sends them as one pipelined ``MULTI``, the XADDs,
``EXEC``: all of them are appended or none is. Only after Redis replied does each
file's checkpoint move to the end of its last batch.

Why a transaction: under ``maxmemory`` with ``noeviction`` Redis refuses a write with
``OOM`` while memory is over the limit, and memory moves between two commands of one
pipeline (a shipper's XACK and trim free some). Without MULTI, XADD *k* could be
refused and XADD *k+1* of the same file accepted: retrying the pipeline then appended
the gap after its successor (out of order) and re-appended what Redis had accepted
(duplicates). Inside MULTI, a command refused while queueing aborts the whole
transaction (``EXECABORT``), so a retry re-sends exactly what is not in the stream.
The one case left is a connection lost after ``EXEC`` was sent: then the retry may
repeat that one pipeline, with the same record ids (the consumer dedupes them).

Faults: a temporary error (Redis down, restarting, OOM) is retried after full-jitter
backoff (:mod:`opsq.core.backoff`); the queue fills, readers pause (``block``) or drop
and count (``drop``), and the checkpoint stays at the last acknowledged batch. A
permanent error (a wrong password, ``WRONGTYPE`` on the stream key) will not pass by
waiting: the sender stops and the agent exits with the message, nothing acknowledged
is lost.

Shutdown: :meth:`Sender.close` gives the queue until a deadline; a round trip still
blocked then (a frozen Redis) is interrupted by shutting the socket down.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from agents.checkpoint import CheckpointStore
from agents.lines import Batch
from agents.resp import Command, RespClient
from opsq.core.backoff import Backoff
from opsq.core.config.logs import AgentSettings
from opsq.core.errors import PermanentError, RedisUnavailable
from opsq.core.metrics import logs_agent as metrics

log = logging.getLogger(__name__)

PIPELINE_ENTRIES = 64
"""Entries per round trip: ~64 x 2000 lines; more gains nothing measurable."""
PIPELINE_BYTES = 2 * 1024 * 1024
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0
TAKE_TIMEOUT_S = 0.1
INTERRUPT_JOIN_S = 0.25
"""How long the interrupted sender gets to notice (it wakes in milliseconds)."""


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
        self.failure: PermanentError | None = None
        """Set when the sender stopped on an error retrying cannot fix."""
        self._closing = threading.Event()
        self._abort = threading.Event()
        self._deadline = float("inf")
        self._unflushed_lines = 0
        self._last_flush = time.monotonic()

    # --- lifecycle --------------------------------------------------------------------
    def close(self, deadline: float) -> None:
        """Send what is queued until *deadline* (monotonic), then stop (readers stopped)."""
        self._deadline = deadline
        self._closing.set()
        self.join(max(0.0, deadline - time.monotonic()))
        if self.is_alive():
            self._abort.set()
            self.client.interrupt()  # a round trip blocked on a frozen Redis wakes now
            self.join(INTERRUPT_JOIN_S)

    def run(self) -> None:
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
        except PermanentError as exc:
            self.failure = exc
            log.error("XADD refused for good, stopping the agent: %s", exc)
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
        backoff = Backoff(base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S)
        while True:
            try:
                self._xadd(batches)
            except RedisUnavailable as exc:
                if self._abort.is_set():
                    return False
                delay = backoff.next()
                metrics.SEND_ERRORS.inc()
                log.warning("XADD failed, retrying in %.1fs: %s", delay, exc)
            else:
                return True
            if time.monotonic() + delay > self._deadline or self._abort.wait(delay):
                log.warning("shutdown grace over with %d entries unacknowledged", len(batches))
                return False

    def _xadd(self, batches: list[Batch]) -> None:
        stream = self.stream.encode()
        commands: list[Command] = [[b"MULTI"]]
        commands += [xadd(stream, batch.fields) for batch in batches]
        if self.cfg.maxlen is not None:
            # Exact XTRIM after the adds: its reply is how many entries the cap removed.
            commands.append([b"XTRIM", stream, b"MAXLEN", b"=", str(self.cfg.maxlen).encode()])
        commands.append([b"EXEC"])
        replies = self.client.execute(commands, "XADD to the log stream")
        done = replies[-1]
        trimmed = done[-1] if isinstance(done, list) and done else None
        if self.cfg.maxlen is not None and isinstance(trimmed, int) and trimmed:
            metrics.ENTRIES_TRIMMED.inc(trimmed)

    # --- after the ack ----------------------------------------------------------------
    def _acked(self, batches: list[Batch]) -> None:
        lines = 0
        for batch in batches:
            self.store.advance(batch.fid, batch.end)
            for fid, end in batch.also:
                self.store.advance(fid, end)
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
