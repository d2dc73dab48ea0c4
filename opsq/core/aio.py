"""Event loops for opsq's asyncio hot paths: uvloop when installed, else asyncio's,
and a garbage-collector setting for them.

The probe engine opens and closes one TCP connection per probe; that is event-loop
work (socket setup, selector registration, timers, transport callbacks) more than
Python work, and uvloop (libuv, written in Cython) does it with less CPU. Measured
with ``python -m bench probe_transports`` and ``python -m bench probes`` on the
project's 2-core machine (numbers in the README's probes section). uvloop is a
dependency on the platforms it supports; elsewhere (Windows, an interpreter it has no
wheel for) the standard loop is used and nothing else changes.

The cyclic garbage collector is the other large cost: every probe allocates a few
hundred container objects (aiohttp's request, protocol, futures, our result), and
with CPython's default threshold (a collection every 700 net allocations) the
collector runs thousands of times per batch, walking the batch's live targets,
tasks and results each time. :func:`relaxed_gc` raises the first threshold to
:data:`GC_GEN0_THRESHOLD` while probes run: CPU per probe of the in-process engine
fell from about 370 to 250 us on this machine (``bench/probes.py``). Reference
counting still frees almost everything at once; only reference cycles wait longer,
bounded by the threshold.

Only the loops opsq creates itself use it (the probe engine's :func:`run` and the
worker's persistent batch loop): no global event loop policy is installed, so
libraries and tests that create their own loops are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
GC_GEN0_THRESHOLD = 10_000
"""Allocations between young-generation collections while probing (CPython: 700)."""


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """``uvloop.new_event_loop`` when uvloop imports, else ``asyncio.new_event_loop``."""
    try:
        import uvloop  # noqa: PLC0415 - optional: absent where it has no wheel
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the fastest available kind (the caller runs and closes it)."""
    return loop_factory()()


@contextlib.contextmanager
def relaxed_gc() -> Iterator[None]:
    """Collect young garbage less often inside the block; restores the old thresholds."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], GC_GEN0_THRESHOLD), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the fastest available loop, under :func:`relaxed_gc`."""
    with relaxed_gc(), asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
