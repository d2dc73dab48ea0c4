"""The log shipper: stream entries -> sink, acknowledged only after the sink confirmed.

Why it is built this way:

- **A consumer group with a stable consumer name.** Entries delivered to a consumer
  stay in its pending list (PEL) until XACKed, so a crash loses nothing: on start
  the shipper first re-reads its *own* pending entries (``XREADGROUP ... 0``), then
  new ones (``>``). A stable name (the host name by default) is what lets a restarted
  shipper find its own PEL again.
- **XACK after the sink's confirmation**, never before: the sink returns after fsync
  (file) or a 2xx (HTTP). A crash between the two re-delivers the entry (at least
  once); record ids are deterministic (file identity + offset), so duplicates are
  idempotent in Elasticsearch and removable by id everywhere else.
- **Dead consumers' entries are claimed** with XAUTOCLAIM once idle longer than
  ``claim_idle``, following the cursor until ``0-0``. Entries Redis reports as deleted
  (trimmed by a user's MAXLEN cap) are already gone from the PEL; they are counted.
- **Poison is bounded.** An entry that cannot be decoded never will be (decoding is
  deterministic), so it goes straight to the dead-letter stream, as does one the sink
  refuses for good. An entry whose sink writes died unfinished more than
  ``max_deliveries`` times (counted in Redis, :mod:`agents.attempts`; restarts and sink
  outages do not count, unlike the XPENDING delivery counter every ``XREADGROUP 0``
  raises) goes there too. See :mod:`agents.deadletter` for the stream itself.
- **Faults back off with jitter and retry; nothing is acknowledged meanwhile.** A sink
  that is down keeps the batch in memory and retried, and the in-flight entries are
  re-claimed by this consumer (``XCLAIM ... JUSTID``) so that a healthy peer does not
  take over entries this shipper is still actively working on. Redis unavailable:
  back off, reconnect, recreate the group if Redis lost it (from id 0: re-delivering
  is safe, skipping is not) and re-read the own PEL, which also recovers entries
  whose XREADGROUP reply was lost with the connection.
- **Shutdown** (SIGTERM sets ``stop``): no new reads; the in-flight batch is finished
  (sink write + XACK), retrying a failing sink, all within ``shutdown_grace`` even if
  the sink or Redis hang (:mod:`agents.grace`); what is still unconfirmed then simply
  stays pending for the next start or a peer.
- Plain synchronous code: one batch at a time is what makes "ack only what the sink
  confirmed" obvious, and each batch holds thousands of records (the agent packs
  many lines per entry), so the per-batch round trips do not limit throughput.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import redis

from agents.attempts import Attempts
from agents.deadletter import DeadLetters, record
from agents.grace import Grace, GraceOver
from agents.retention import Retention
from agents.sinks.base import Delivery, Outcome, Sink
from opsq.core import keys
from opsq.core import redis_errors as policy
from opsq.core.backoff import Backoff
from opsq.core.config.logs import ShipperSettings
from opsq.core.errors import (
    OpsqError,
    PermanentError,
    RedisCommandError,
    RedisUnavailable,
    TemporaryError,
)
from opsq.core.logformat import decode
from opsq.core.metrics import logs_shipper as m

log = logging.getLogger(__name__)

T = TypeVar("T")
RawEntry = tuple[str, dict[bytes, bytes]]


def redis_errors(what: str) -> policy.redis_errors:
    """The shared Redis error policy (:mod:`opsq.core.redis_errors`), with NOGROUP as
    "retry" too: here it means Redis lost the group (restarted without its data), and
    recovery recreates it."""
    return policy.redis_errors(what, temporary={"NOGROUP"})


def _backoff(cap: float) -> Backoff:
    """Full jitter from 50 ms: a fleet of shippers does not hit a recovering sink or
    Redis in lockstep."""
    return Backoff(base=0.05, cap=cap)


def default_consumer() -> str:
    return socket.gethostname()


def ensure_group(client: redis.Redis[bytes], stream: str, group: str) -> None:
    """Create the group (and the stream) if missing; idempotent.

    From id 0, not ``$``: entries already in the stream were never shipped, and a
    group Redis lost must re-deliver rather than skip.
    """
    with redis_errors("XGROUP CREATE"), policy.ignore_reply("BUSYGROUP"):
        client.xgroup_create(stream, group, id="0", mkstream=True)


def group_exists(client: redis.Redis[bytes], stream: str, group: str) -> bool:
    """Readiness: Redis answers and the consumer group is there."""
    try:
        with redis_errors("XINFO GROUPS"):
            groups = client.xinfo_groups(stream)  # type: ignore[no-untyped-call]
    except RedisCommandError:  # ERR no such key: not ready
        return False
    return any(g["name"] in (group, group.encode()) for g in groups)


class Shipper:
    """Consume one stream with one consumer name and write to one sink."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        *,
        stream: str,
        settings: ShipperSettings,
        sink: Sink,
        consumer: str | None = None,
        stop: threading.Event | None = None,
        retry_cap: float = 5.0,
        on_deadline: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.settings = settings
        self.group = settings.group
        self.sink = sink
        self.consumer = consumer or settings.consumer or default_consumer()
        self.stop = stop or threading.Event()
        self.dead_letter_stream = keys.dead_letter(stream)
        self.retry_cap = retry_cap
        self.on_deadline = on_deadline
        """Called once if the shutdown deadline passes with the loop still running (a
        Redis call blocked on a frozen server): ``opsq ship`` exits there."""
        self._retention = Retention(client, stream)
        self._backoff = _backoff(retry_cap)
        self._block_ms = int(settings.block * 1000) or None  # 0 would mean "forever"
        self._claim_every = min(max(settings.claim_idle / 2, 0.05), 30.0)
        self._next_claim = 0.0
        self._next_trim = 0.0
        self._needs_recovery = True
        self._attempts = Attempts(client, stream, self.group)
        self._dead = DeadLetters(client, stream)
        self._grace = Grace(self.stop, settings.shutdown_grace)

    # --- the loop --------------------------------------------------------------------

    def run(self) -> None:
        """Ship until ``stop`` is set; the batch in flight is finished first."""
        log.info("shipping %s as %s/%s to %s", self.stream, self.group, self.consumer,
                 self.sink.name)  # fmt: skip
        finished = threading.Event()
        if self.on_deadline is not None:
            self._grace.watch(self.on_deadline, finished)
        try:
            while not self.stop.is_set():
                self.step()
        finally:
            finished.set()
        log.info("shipper %s stopped", self.consumer)

    def step(self) -> int:
        """One iteration: recover if needed, housekeeping, one batch of new entries.

        Returns how many entries were finished (acked, dead-lettered or gone).
        """
        try:
            handled = 0
            if self._needs_recovery:
                ensure_group(self.client, self.stream, self.group)
                handled += self.drain_own_pending()
                self._needs_recovery = False
            handled += self._housekeeping()
            if not self.stop.is_set():
                handled += self._handle(self._read(">", self._block_ms))
            self._backoff.reset()
            return handled
        except RedisUnavailable as exc:
            self._needs_recovery = True
            if self.stop.is_set():
                return 0
            delay = self._backoff.next()
            log.warning("redis unavailable (%s); retrying in %.2fs", exc, delay)
            self._grace.pause(delay)
            return 0

    def drain_own_pending(self) -> int:
        """Re-deliver this consumer's own pending entries (left by a crash or a lost reply)."""
        cursor, total = "0", 0
        while not self.stop.is_set():
            raw = self._read(cursor, None)
            if not raw:
                break
            total += self._handle(raw)
            cursor = raw[-1][0]
        if total:
            log.info("finished %d entries left pending for %s", total, self.consumer)
        return total

    def claim_idle(self) -> int:
        """Take over entries idle longer than ``claim_idle`` (a dead consumer's) and ship them."""
        cursor, total = "0-0", 0
        min_idle = max(1, int(self.settings.claim_idle * 1000))
        while not self.stop.is_set():
            with redis_errors("XAUTOCLAIM"):
                reply = self.client.xautoclaim(
                    self.stream, self.group, self.consumer, min_idle, cursor,
                    count=self.settings.batch,
                )  # fmt: skip
            cursor = _text(reply[0])
            deleted = [_text(i) for i in (reply[2] if len(reply) > 2 else [])]
            if deleted:  # Redis 7+: already removed from the PEL; the data is gone
                self._forget_attempts(deleted)
                m.ENTRIES.labels("gone").inc(len(deleted))
                log.warning("%d claimed entries were deleted from the stream", len(deleted))
            raw = [(_text(i), f) for i, f in reply[1]]
            if raw:
                m.CLAIMED.inc(len(raw))
                log.info("claimed %d idle entries", len(raw))
                total += self._handle(raw)
            if cursor == "0-0":
                break
        return total

    def trim(self) -> int:
        """Retention of the stream and of the dead letters, then refresh the gauges."""
        with redis_errors("XTRIM MINID"):
            trimmed = self._retention.trim()
            dead = self._dead.trim(self.settings.dead_retention)
        if trimmed:
            m.TRIMMED.labels(self.stream).inc(trimmed)
        if dead:
            m.TRIMMED.labels(self._dead.key).inc(dead)
            log.info("%d dead letters older than dead_retention trimmed", dead)
        with redis_errors("XLEN/XPENDING"):
            length = self.client.xlen(self.stream)
            pending = self.client.xpending(self.stream, self.group)["pending"]  # type: ignore[no-untyped-call]
            dead_length = self._dead.length()
        m.STREAM_LENGTH.labels(self.stream).set(length)
        m.STREAM_LENGTH.labels(self._dead.key).set(dead_length)
        m.STREAM_PENDING.labels(self.stream, self.group).set(pending)
        return trimmed

    def _housekeeping(self) -> int:
        now = time.monotonic()
        handled = 0
        if now >= self._next_claim:
            handled += self.claim_idle()
            self._next_claim = now + self._claim_every
        if now >= self._next_trim:
            self.trim()
            self._next_trim = now + self.settings.trim_interval
        return handled

    # --- reading -----------------------------------------------------------------------

    def _read(self, start: str, block_ms: int | None) -> list[RawEntry]:
        with redis_errors("XREADGROUP"):
            reply = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: start},
                count=self.settings.batch, block=block_ms,
            )  # fmt: skip
        if not reply:
            return []
        return [(_text(i), fields or {}) for i, fields in reply[0][1]]

    # --- deciding what to do with each entry ----------------------------------------

    def _handle(self, raw: Sequence[RawEntry]) -> int:
        """Sort entries into gone / dead-letter / ship, then act on each group."""
        gone: list[str] = []
        ship: list[Delivery] = []
        for entry_id, fields in raw:
            if not fields:  # deleted from the stream while pending
                gone.append(entry_id)
                continue
            try:
                ship.append(Delivery(entry_id, decode(fields), fields))
            except (ValueError, KeyError) as exc:  # UnicodeDecodeError is a ValueError
                self._dead_letter(entry_id, fields, "poison", f"undecodable entry: {exc!r}")
        if gone:
            self._ack(gone)
            m.ENTRIES.labels("gone").inc(len(gone))
            log.warning("%d pending entries were deleted from the stream", len(gone))
        self._ship(self._begin(ship))
        return len(raw)

    def _begin(self, batch: Sequence[Delivery]) -> list[Delivery]:
        """Count the sink write about to start; dead-letter what died too often before."""
        with redis_errors("HINCRBY attempts"):
            counts = self._attempts.begin([d.id for d in batch])
        limit = self.settings.max_deliveries
        keep = []
        for d in batch:
            died = counts[d.id] - 1
            if died >= limit:
                why = f"{died} sink writes died unfinished (max_deliveries {limit})"
                self._dead_letter(d.id, d.fields, "max_deliveries", why)
            else:
                keep.append(d)
        return keep

    # --- writing -----------------------------------------------------------------------

    def _ship(self, batch: Sequence[Delivery]) -> None:
        """Write to the sink until every entry is confirmed or refused (or grace ran out)."""
        pending = list(batch)
        backoff = _backoff(self.retry_cap)
        while pending:
            try:
                outcome = self._grace.bounded(functools.partial(self._write, pending))
            except GraceOver:
                self._give_back(pending, "the sink did not answer")
                return
            except TemporaryError as exc:
                outcome = Outcome(retry=pending)
                log.warning("sink %s failed: %s", self.sink.name, exc)
                delay = exc.delay
            else:
                delay = None
            self._settle(pending, outcome)
            pending = outcome.retry
            if not pending:
                return
            m.SINK_ERRORS.labels(self.sink.name).inc()
            if self._grace.over():
                self._give_back(pending, "the sink kept failing")
                return
            self._wait_keeping(pending, delay if delay is not None else backoff.next())

    def _give_back(self, pending: Sequence[Delivery], why: str) -> None:
        """Shutdown with entries unwritten: they stay pending, and this unfinished write
        is not the entries' fault, so it does not count towards max_deliveries."""
        log.warning("shutdown grace over (%s): %d entries stay pending", why, len(pending))
        with contextlib.suppress(OpsqError), redis_errors("HINCRBY attempts"):
            self._attempts.finish([d.id for d in pending])

    def _write(self, batch: Sequence[Delivery]) -> Outcome:
        """Sink write; a whole-batch PermanentError is bisected down to the refused entries."""
        try:
            return self.sink.write(batch)
        except PermanentError as exc:
            if len(batch) == 1:
                return Outcome(rejected={batch[0].id: str(exc)})
            half = len(batch) // 2
            return self._write(batch[:half]).merge(self._write(batch[half:]))

    def _settle(self, batch: Sequence[Delivery], outcome: Outcome) -> None:
        """Acknowledge what the sink confirmed; dead-letter what it refused."""
        retry = {d.id for d in outcome.retry}
        done = [d for d in batch if d.id not in retry and d.id not in outcome.rejected]
        if done:
            now_ms = time.time() * 1000
            for d in done:
                m.SINK_APPEND_SECONDS.observe(max(0.0, now_ms - d.ms) / 1000)
            ids = [d.id for d in done]
            self._ack(ids)
            m.ENTRIES.labels("acked").inc(len(done))
            m.RECORDS.inc(sum(len(d.entry.records) for d in done))
        for d in batch:
            if d.id in outcome.rejected and d.id not in retry:
                self._dead_letter(d.id, d.fields, "rejected", outcome.rejected[d.id])

    def _ack(self, ids: Sequence[str]) -> None:
        """XACK *ids* and drop their attempt counts (one MULTI)."""

        def xack() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.xack(self.stream, self.group, *ids)
            self._attempts.forget(pipe, ids)
            pipe.execute()

        self._persist("XACK", xack)

    def _forget_attempts(self, ids: Sequence[str]) -> None:
        def hdel() -> None:
            pipe = self.client.pipeline(transaction=False)
            self._attempts.forget(pipe, ids)
            pipe.execute()

        self._persist("HDEL attempts", hdel)

    def _dead_letter(self, entry_id: str, fields: dict[bytes, bytes], kind: str, why: str) -> None:
        """Copy the entry to the dead-letter stream and XACK it, atomically (MULTI)."""

        def move() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(self.dead_letter_stream, record(fields, entry_id, self.group, why))
            pipe.xack(self.stream, self.group, entry_id)
            self._attempts.forget(pipe, [entry_id])
            pipe.execute()

        self._persist("dead-letter", move)
        m.ENTRIES.labels("dead_lettered").inc()
        m.DEAD_LETTERED.labels(kind).inc()
        log.warning("entry %s moved to %s: %s", entry_id, self.dead_letter_stream, why)

    def _persist(self, what: str, call: Callable[[], T]) -> T:
        """Run a Redis write that must happen (an ack after a sink write), retrying.

        Retrying in place rather than unwinding avoids writing the batch to the sink
        again just because Redis blinked after the sink had it.
        """
        backoff = _backoff(self.retry_cap)
        while True:
            try:
                with redis_errors(what):
                    return call()
            except RedisUnavailable as exc:
                if self._grace.over():
                    raise
                delay = backoff.next()
                log.warning("redis unavailable for %s (%s); retrying in %.2fs", what, exc, delay)
                self._grace.pause(delay)

    def _wait_keeping(self, pending: Sequence[Delivery], delay: float) -> None:
        """Sleep before a retry, keeping the in-flight entries ours (resets their idle time).

        Retention and the stream gauges keep running meanwhile: a growing backlog is what
        alerts watch.
        """
        self._grace.pause(delay)
        if self._grace.over():
            return
        ids = [d.id for d in pending]
        with contextlib.suppress(RedisUnavailable):
            with redis_errors("XCLAIM"):
                self.client.xclaim(  # type: ignore[no-untyped-call]
                    self.stream, self.group, self.consumer, 0, ids, justid=True
                )
            if time.monotonic() >= self._next_trim:  # the backlog gauges matter most now
                self.trim()
                self._next_trim = time.monotonic() + self.settings.trim_interval


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
