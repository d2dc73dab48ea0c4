"""Child processes that cannot outlive their parent.

A supervisor that is SIGKILLed (OOM killer, ``kill -9``, a closed terminal) gets no
chance to stop its children. Linux can do it for us: ``prctl(PR_SET_PDEATHSIG)`` asks
the kernel to send the child a signal when the thread that forked it dies. We ask for
SIGTERM, so a Celery worker still does its warm shutdown (in-flight work handed back)
instead of vanishing.

The libc handle is resolved in the parent, before any fork, because ``preexec_fn`` runs
between fork and exec where importing or loading libraries could deadlock on a lock
held by another thread of the parent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] | None = getattr(libc, "prctl", None)
    return prctl


_PRCTL = _load_prctl()


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets *sig* when this process dies.

    If the parent already died between fork and prctl (the child was re-parented),
    the child exits at once instead of running unsupervised.
    """
    parent = os.getpid()

    def _preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return _preexec


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group *pgid*, read from /proc.

    ``killpg(pgid, 0)`` is not enough: an orphan re-parented to a PID 1 that never
    reaps (common in containers) stays a zombie in the group forever.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            return [pgid]  # exists, owned by someone else
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    """True while any live process of process group *pgid* exists."""
    return bool(group_members(pgid))


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a whole process group, ignoring one that is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
