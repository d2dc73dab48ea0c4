"""Event loops for opsq's asyncio hot paths: uvloop when installed, else asyncio's.

The probe engine opens and closes one TCP connection per probe; that is event-loop
work (socket setup, selector registration, timers, transport callbacks) more than
Python work, and uvloop (libuv, written in Cython) does it with less CPU. Measured
with ``python -m bench probe_transports`` and ``python -m bench probes`` on the
project's 2-core machine (numbers in the README's probes section). uvloop is a
dependency on the platforms it supports; elsewhere (Windows, an interpreter it has no
wheel for) the standard loop is used and nothing else changes.

Only the loops opsq creates itself use it (the probe engine's :func:`run` and the
worker's persistent batch loop): no global event loop policy is installed, so
libraries and tests that create their own loops are unaffected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


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


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the fastest available loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
