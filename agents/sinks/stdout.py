"""Standard-output sink: JSON lines on stdout, for ``kubectl logs`` style collection.

A flush per batch is the strongest confirmation a pipe offers; whatever reads the
pipe owns durability from there. A closed pipe is reported as a temporary failure so
nothing is acknowledged that nobody read.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from agents.sinks.base import Delivery, Outcome, jsonl_bytes
from opsq.core.errors import TemporaryError


class StdoutSink:
    name = "stdout"

    def write(self, batch: Sequence[Delivery]) -> Outcome:
        try:
            sys.stdout.buffer.write(jsonl_bytes(batch))
            sys.stdout.buffer.flush()
        except (OSError, ValueError) as exc:  # ValueError: stdout already closed
            raise TemporaryError(f"stdout sink: {exc}") from exc
        return Outcome()

    def close(self) -> None:
        return None
