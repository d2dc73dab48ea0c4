"""The supervisor behind `opsq up`, with real child processes (small Python scripts).

What is proved: stop order by phase, SIGKILL of a child that ignores SIGTERM, no
grandchild left behind, restart with doubling backoff, children dying with a SIGKILLed
supervisor (PR_SET_PDEATHSIG), reaping of groups left by a crashed run (and only
those), and one supervisor per data dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from opsq.cli.supervisor import SESSION_ENV, Child, PidFile, RedisChild, Supervisor, exclusive
from opsq.core.errors import OpsqError
from opsq.core.procs import group_alive
from opsq.core.redis_server import RedisServer
from tests.deploy.util import pid_alive, wait_for

ROOT = Path(__file__).resolve().parents[2]


def script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def child(tmp_path: Path, name: str, body: str, phase: int = 0, **env: str) -> Child:
    return Child(
        name=name,
        argv=script(body),
        env={**os.environ, **env},
        log_path=tmp_path / f"{name}.log",
        phase=phase,
    )


# Writes <name>.up when running, <name>.down on SIGTERM; the later phase records whether
# the earlier phase was already down when it got its own SIGTERM.
ORDERED = """
    import os, signal, sys, time
    from pathlib import Path
    d = Path(os.environ["DIR"]); me = os.environ["ME"]; before = os.environ.get("BEFORE")
    def term(*_):
        seen = (d / f"{before}.down").exists() if before else True
        (d / f"{me}.down").write_text(str(seen))
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    (d / f"{me}.up").write_text("1")
    while True:
        time.sleep(0.05)
"""


def test_children_stop_phase_by_phase(tmp_path: Path) -> None:
    """Phase 0 (workers) is down before phase 1 (beat) gets SIGTERM, and Redis's phase last."""
    children = [
        child(tmp_path, "worker", ORDERED, 0, DIR=str(tmp_path), ME="worker"),
        child(tmp_path, "beat", ORDERED, 1, DIR=str(tmp_path), ME="beat", BEFORE="worker"),
        child(tmp_path, "redis", ORDERED, 99, DIR=str(tmp_path), ME="redis", BEFORE="beat"),
    ]
    sup = Supervisor(children, stop_timeout=20, notify=lambda _: None)
    sup.start_all()
    assert wait_for(
        lambda: all((tmp_path / f"{n}.up").exists() for n in ("worker", "beat", "redis"))
    )
    sup.stop_all()
    assert (tmp_path / "worker.down").read_text() == "True"
    assert (tmp_path / "beat.down").read_text() == "True"
    assert (tmp_path / "redis.down").read_text() == "True"
    assert sup.leftovers() == []


def test_child_ignoring_sigterm_is_killed_at_the_bound(tmp_path: Path) -> None:
    """A stuck child cannot hold the stop forever: SIGKILL once the bound is reached."""
    stubborn = child(
        tmp_path, "stubborn",
        """
        import signal, time, os
        from pathlib import Path
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Path(os.environ["READY"]).write_text("1")
        while True:
            time.sleep(1)
        """,
        READY=str(tmp_path / "ready"),
    )  # fmt: skip
    messages: list[str] = []
    sup = Supervisor([stubborn], stop_timeout=2, notify=messages.append)
    sup.start_all()
    assert wait_for((tmp_path / "ready").exists)
    sup.stop_all()
    assert stubborn.returncode() == -signal.SIGKILL
    assert any("did not stop in time" in m for m in messages)
    assert sup.leftovers() == []


def test_grandchildren_in_the_group_are_not_left_behind(tmp_path: Path) -> None:
    """A child's own children (like Celery's pool) die with it, even if they ignore SIGTERM."""
    parent = child(
        tmp_path, "parent",
        """
        import os, signal, subprocess, sys, time
        from pathlib import Path
        code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        kid = subprocess.Popen([sys.executable, "-c", code])
        Path(os.environ["KID"]).write_text(str(kid.pid))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(0.05)
        """,
        KID=str(tmp_path / "kid.pid"),
    )  # fmt: skip
    sup = Supervisor([parent], stop_timeout=5, notify=lambda _: None)
    sup.start_all()
    assert wait_for((tmp_path / "kid.pid").exists)
    kid = int((tmp_path / "kid.pid").read_text())
    sup.stop_all()
    assert wait_for(lambda: not pid_alive(kid), 10)
    assert sup.leftovers() == []


class _AlwaysExited:
    """A child that has exited whenever asked (no process: only the delays are tested)."""

    name, phase, pgid = "exited", 0, None

    def start(self) -> None:
        return None

    def returncode(self) -> int:
        return 3


def test_restart_delay_is_drawn_with_full_jitter_under_the_ceiling() -> None:
    """Delay = rng() x ceiling (opsq.core.backoff), not the ceiling: 0.5 x 1 s, then
    0.75 x 2 s; children that crashed together do not restart in the same instant."""
    draws = iter([0.5, 0.75])
    sup = Supervisor(
        [_AlwaysExited()],
        backoff_initial=1.0,
        backoff_max=30.0,
        notify=lambda _: None,
        rng=lambda: next(draws),
    )
    sup.start_all()
    sup.check_children()
    assert sup._state["exited"].delay == 0.5
    sup._state["exited"].restart_at = 0.0  # due now: restart it
    sup.check_children()
    sup.check_children()  # it exited again
    assert sup._state["exited"].delay == 1.5


def test_crashed_child_is_restarted_with_doubling_backoff(tmp_path: Path) -> None:
    """Exit -> restart under a ceiling of 0.1 s, then 0.2 s, 0.4 s ... (rng pinned to the
    ceiling); each start really runs the command."""
    counter = tmp_path / "starts"
    crasher = child(
        tmp_path, "crasher",
        """
        import os, sys
        from pathlib import Path
        # One appended line per start: a rewrite cut short by stop_all's SIGTERM
        # left an empty file (and a flaky int("") in the assertion below).
        with Path(os.environ["COUNTER"]).open("a") as f:
            print("start", file=f)
        sys.exit(3)
        """,
        COUNTER=str(counter),
    )  # fmt: skip
    messages: list[str] = []
    sup = Supervisor(
        [crasher], backoff_initial=0.1, backoff_max=0.4, notify=messages.append, rng=lambda: 1.0
    )
    sup.start_all()
    delays = []
    while sup.restarts("crasher") < 4:
        sup.check_children()
        delay = sup._state["crasher"].delay
        if delay and (not delays or delays[-1] != delay):
            delays.append(delay)
        time.sleep(0.02)
    sup.stop_all()
    assert delays[:3] == [0.1, 0.2, 0.4]
    assert len(counter.read_text().splitlines()) >= 4
    restarts = REGISTRY.get_sample_value("opsq_up_child_restarts_total", {"child": "crasher"})
    assert restarts == sup.restarts("crasher")
    assert REGISTRY.get_sample_value("opsq_up_child_up", {"child": "crasher"}) == 0
    assert any("exited with code 3" in m for m in messages)


def test_children_die_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """kill -9 of the supervisor: PR_SET_PDEATHSIG sends each child SIGTERM."""
    pid_file = tmp_path / "child.pid"
    program = f"""
        import os, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from opsq.cli.supervisor import Child, Supervisor
        code = ("import os,time; open({str(pid_file)!r}, 'w').write(str(os.getpid()));"
                " time.sleep(600)")
        c = Child(name="sleeper", argv=[sys.executable, "-c", code], env=dict(os.environ),
                  log_path=Path({str(tmp_path / "sleeper.log")!r}))
        sup = Supervisor([c], notify=lambda _: None)
        sup.run()
    """
    proc = subprocess.Popen(script(program), start_new_session=True)
    try:
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text() != "")
        kid = int(pid_file.read_text())
        assert pid_alive(kid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: not pid_alive(kid), 10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stale_groups_of_a_crashed_run_are_reaped_and_others_spared(tmp_path: Path) -> None:
    """Only processes carrying the recorded session token are killed by the next run."""
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    ours = subprocess.Popen(
        sleep, env={**os.environ, SESSION_ENV: "abc123"}, start_new_session=True
    )
    other = subprocess.Popen(sleep, env={**os.environ, SESSION_ENV: "zzz"}, start_new_session=True)
    try:
        PidFile(tmp_path / "up.pids", "abc123").write({"a": ours.pid, "b": other.pid})
        reaped = PidFile(tmp_path / "up.pids", "new").reap_stale()
        assert reaped == [ours.pid]
        assert ours.wait(10) == -signal.SIGKILL
        assert other.poll() is None
        assert group_alive(other.pid)
    finally:
        for p in (ours, other):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_one_supervisor_per_data_dir(tmp_path: Path) -> None:
    """A second `opsq up` on the same data dir is refused with a clear message."""
    with exclusive(tmp_path), pytest.raises(OpsqError, match="another `opsq up`"):
        with exclusive(tmp_path):
            pass
    with exclusive(tmp_path):
        pass  # released on exit


def test_embedded_redis_is_restarted_on_its_port_with_its_data(tmp_path: Path) -> None:
    """kill -9 of the embedded valkey-server: restarted on the same port, AOF data intact."""
    server = RedisServer(tmp_path / "redis", appendonly=True, tie_to_parent=True)
    sup = Supervisor([RedisChild(server)], backoff_initial=0.1, notify=lambda _: None)
    sup.start_all()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        client.execute_command("BGREWRITEAOF")  # make the write durable before the crash
        assert wait_for(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0)
        first_pid = server.proc.pid  # type: ignore[union-attr]
        server.kill9()
        assert wait_for(lambda: (sup.check_children(), sup.restarts("redis") == 1)[1], 20)
        assert server.proc.pid != first_pid  # type: ignore[union-attr]
        assert client.get("kept") == b"yes"
        client.close()
    finally:
        sup.stop_all()
    assert sup.leftovers() == []
