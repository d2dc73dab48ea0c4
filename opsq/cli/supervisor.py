"""Run a set of child processes as one unit: start, restart with backoff, stop in order.

``opsq up`` needs what a process manager gives a production service, on a laptop:

- **Own process groups.** Every child starts in a new session, so a Ctrl-C typed in
  the terminal reaches only the supervisor, which then stops children in a safe order
  (workers before the Redis they hand work back to). Signals go to the whole group,
  so a Celery worker's pool processes are never orphaned.
- **Stop in phases within a bound.** Phase by phase, children get SIGTERM (a Celery
  worker's warm shutdown: running tasks finish, unstarted ones go back to the queue)
  and are waited for; whatever is still running when the bound is reached is SIGKILLed.
  The last phase (Redis) has a reserved slice of the bound, so it always gets a
  clean shutdown after the processes that write to it.
- **Restart with backoff.** A child that exits on its own is restarted after a delay
  drawn with full jitter (:mod:`opsq.core.backoff`) under a ceiling of 1, 2, 4 ...
  seconds (capped); the ceiling resets once it has run for a while. Jitter matters
  here: a Redis restart makes every worker, beat and the watcher exit together, and
  they should not all reconnect in the same instant.
- **Nothing survives the supervisor.** Children get ``PR_SET_PDEATHSIG`` (see
  :mod:`opsq.core.procs`); and because a SIGKILLed supervisor cannot clean up, the
  process groups of a run are recorded in a pid file that the next run reaps, after
  checking each group still carries this run's session token in its environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from opsq.core.backoff import Backoff, Rng
from opsq.core.errors import OpsqError
from opsq.core.metrics.up import CHILD_RESTARTS, CHILD_UP
from opsq.core.procs import die_with_parent, group_alive, kill_group
from opsq.core.redis_server import RedisServer

SESSION_ENV = "OPSQ_UP_SESSION"
"""Set in every child's environment; identifies the run that owns the process."""

Notify = Callable[[str], None]


class Managed(Protocol):
    """What the supervisor needs from anything it runs."""

    name: str
    phase: int

    def start(self) -> None: ...

    def returncode(self) -> int | None: ...

    @property
    def pgid(self) -> int | None: ...


@dataclass
class Child:
    """A command run in its own process group with output to a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    phase: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - libc resolved before fork
            )  # fmt: skip

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def pgid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


@dataclass
class RedisChild:
    """The embedded valkey-server as a supervised child (always the last to stop)."""

    server: RedisServer
    name: str = "redis"
    phase: int = 99

    def start(self) -> None:
        self.server.start()  # returns once the server answers PING

    def returncode(self) -> int | None:
        proc = self.server.proc
        return None if proc is None else proc.poll()

    @property
    def pgid(self) -> int | None:
        return None if self.server.proc is None else self.server.proc.pid


@dataclass
class _State:
    backoff: Backoff
    started_at: float = 0.0
    restarts: int = 0
    delay: float = 0.0
    restart_at: float | None = None


class PidFile:
    """Process groups of the current run, so the next run can reap them after a crash."""

    def __init__(self, path: Path, session: str) -> None:
        self.path = path
        self.session = session

    def write(self, groups: dict[str, int]) -> None:
        """Record child name -> process group id (operators read it to find a child)."""
        doc = {
            "supervisor": os.getpid(), "session": self.session,
            "pgids": list(groups.values()), "children": groups,
        }  # fmt: skip
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.path)

    def reap_stale(self) -> list[int]:
        """SIGKILL groups left by a previous run that died without stopping them."""
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        session = str(doc.get("session", ""))
        reaped = []
        for pgid in doc.get("pgids", []):
            if session and _carries_session(int(pgid), session):
                kill_group(int(pgid))
                reaped.append(int(pgid))
        return reaped

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _carries_session(pid: int, session: str) -> bool:
    """True when process *pid* exists and was started by the run with this session."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{SESSION_ENV}={session}".encode() in environ.split(b"\0")


@contextlib.contextmanager
def exclusive(data_dir: Path) -> Iterator[IO[str]]:
    """Hold ``up.lock`` in *data_dir*: two supervisors on one data dir would fight."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / "up.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise OpsqError(
            f"another `opsq up` is running with data dir {data_dir}; stop it or use --data-dir"
        ) from exc
    try:
        yield handle
    finally:
        handle.close()


class Supervisor:
    """Start children in order, keep them running, stop them in phases."""

    def __init__(
        self,
        children: list[Managed],
        *,
        stop_timeout: float = 30.0,
        last_phase_reserve: float = 5.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        stable_after: float = 60.0,
        notify: Notify = print,
        pidfile: PidFile | None = None,
        rng: Rng = random.random,
    ) -> None:
        self.children = children
        self.stop_timeout = stop_timeout
        self.last_phase_reserve = min(last_phase_reserve, stop_timeout / 2)
        self.stable_after = stable_after
        self.notify = notify
        self.pidfile = pidfile
        self._state = {
            c.name: _State(Backoff(base=backoff_initial, cap=backoff_max, rng=rng))
            for c in children
        }
        self._stop = threading.Event()
        self._kill_now = threading.Event()

    # --- running ---------------------------------------------------------------------

    def start_all(self) -> None:
        for child in self.children:
            self._start(child)

    def _start(self, child: Managed) -> None:
        state = self._state[child.name]
        child.start()
        state.started_at = time.monotonic()
        state.restart_at = None
        CHILD_UP.labels(child.name).set(1)
        self._record_pids()

    def _record_pids(self) -> None:
        if self.pidfile is not None:
            self.pidfile.write({c.name: c.pgid for c in self.children if c.pgid is not None})

    def request_stop(self) -> None:
        """Begin a graceful stop; a second request kills what is left at once."""
        if self._stop.is_set():
            self._kill_now.set()
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.request_stop())

    def restarts(self, name: str) -> int:
        return self._state[name].restarts

    def run(self, poll_interval: float = 0.2) -> None:
        """Start everything, supervise until asked to stop, then stop everything."""
        try:
            self.start_all()
            self.supervise(poll_interval)
        finally:
            self.stop_all()

    def supervise(self, poll_interval: float = 0.2) -> None:
        """Restart children that exit, until a stop is requested."""
        while not self._stop.wait(poll_interval):
            self.check_children()

    def check_children(self) -> None:
        """Schedule a restart for each child that exited; start those that are due."""
        now = time.monotonic()
        for child in self.children:
            state = self._state[child.name]
            code = child.returncode()
            if code is not None and state.restart_at is None:
                self._schedule_restart(child, code, now)
            elif state.restart_at is not None and now >= state.restart_at:
                self.notify(f"restarting {child.name} (restart #{state.restarts + 1})")
                try:
                    self._start(child)
                except OpsqError as exc:  # e.g. Redis failed to come back
                    self.notify(f"{child.name} failed to start: {exc}")
                    self._schedule_restart(child, -1, time.monotonic())
                    continue
                # Counted once the new process runs and its pid is recorded, so a reader
                # of the metric never sees a restart whose process does not exist yet.
                state.restarts += 1
                CHILD_RESTARTS.labels(child.name).inc()

    def _schedule_restart(self, child: Managed, code: int, now: float) -> None:
        state = self._state[child.name]
        CHILD_UP.labels(child.name).set(0)
        if child.pgid is not None:
            kill_group(child.pgid)  # leftovers of the dead child (e.g. pool processes)
        if now - state.started_at >= self.stable_after:
            state.backoff.reset()  # it ran well for a while: this is a new failure
        state.delay = state.backoff.next()
        state.restart_at = now + state.delay
        self.notify(f"{child.name} exited with code {code}; restarting in {state.delay:.1f}s")

    # --- stopping --------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop phase by phase within ``stop_timeout``; SIGKILL whatever remains."""
        started = time.monotonic()
        final = started + self.stop_timeout
        phases = sorted({c.phase for c in self.children})
        for index, phase in enumerate(phases):
            members = [c for c in self.children if c.phase == phase]
            last = index == len(phases) - 1
            deadline = final if last else final - self.last_phase_reserve
            self._stop_phase(members, deadline)
        if self.pidfile is not None:
            self.pidfile.remove()

    def _stop_phase(self, members: list[Managed], deadline: float) -> None:
        running = [c for c in members if c.pgid is not None and c.returncode() is None]
        for child in running:
            assert child.pgid is not None
            kill_group(child.pgid, signal.SIGTERM)
        while running and time.monotonic() < deadline and not self._kill_now.is_set():
            running = [c for c in running if c.returncode() is None]
            time.sleep(0.05)
        for child in running:
            self.notify(f"{child.name} did not stop in time; killing it")
        for child in members:
            if child.pgid is not None:
                kill_group(child.pgid)  # stragglers and any orphaned group members
                self._reap(child)
            CHILD_UP.labels(child.name).set(0)

    @staticmethod
    def _reap(child: Managed) -> None:
        deadline = time.monotonic() + 5
        while child.returncode() is None and time.monotonic() < deadline:
            time.sleep(0.02)

    def all_running(self) -> bool:
        """Readiness of the whole set: every child is running right now."""
        return all(c.returncode() is None and c.pgid is not None for c in self.children)

    def leftovers(self) -> list[str]:
        """Names of children whose process group still has a live member."""
        return [c.name for c in self.children if c.pgid is not None and group_alive(c.pgid)]
