"""Reading a container log across a rename rotation without splitting a line.

The kubelet rotates ``0.log`` to ``0.log.<stamp>`` and asks the runtime to reopen
``0.log``; Docker renames ``<id>-json.log`` to ``.1``. The runtime may have written the
first parts (``P``) of a long line to the old file and writes the rest to the new one.
Files of one *chain* (same live name, :func:`agents.podpath.rotation_base`) are
therefore read oldest first, and:

- the live file waits while an older one still has unread lines (after a restart both
  exist at once, and the new file's first part must not be decoded before the old
  file's last parts);
- once the newer file has bytes, the runtime has switched files, so the older one is
  complete: its decoder hands its open lines to the newer file's decoder
  (:meth:`agents.formats.Decoder.hand_over` / ``adopt``). The joined line ships under
  the old file's identity and offset, and the old file's checkpoint stays at the
  line's first part until that entry is acknowledged;
- never into a newer file that was already decoded (it was read before the rotation
  was known): the rest of the line is out already, and adopting would glue the open
  parts to the next line of that stream. They ship as they are instead. (The agent
  marks a rotated file before it opens the file that replaced it, so this is a guard.)

Only tailers with a decoder (``cri``/``docker``) form chains; plain files never wait.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from agents.podpath import rotation_base, rotation_order
from agents.tailer import Tailer

log = logging.getLogger(__name__)


def _rank(tailer: Tailer) -> tuple[tuple[int, str], bool]:
    """Oldest first: by rotation suffix, and a renamed-but-unmatched tailer (its path
    still the live name, ``rotated_at`` set) before the file now at that name."""
    _, suffix = rotation_base(tailer.path)
    return rotation_order(suffix), tailer.rotated_at is None


def _rotated(tailer: Tailer) -> bool:
    return tailer.rotated_at is not None or bool(rotation_base(tailer.path)[1])


class Chains:
    """The read order of one round, and which tailers wait for an older file."""

    def __init__(self, tailers: Iterable[Tailer]) -> None:
        groups: dict[str, list[Tailer]] = {}
        self.order: list[Tailer] = []
        for tailer in tailers:
            if tailer.decoder is None and tailer.fmt != "auto":
                self.order.append(tailer)
            else:
                groups.setdefault(rotation_base(tailer.path)[0], []).append(tailer)
        self._before: dict[int, list[Tailer]] = {}
        for members in groups.values():
            members.sort(key=_rank)
            self.order.extend(members)
            for i, tailer in enumerate(members):
                self._before[id(tailer)] = members[:i]

    def ready(self, tailer: Tailer) -> bool:
        """Whether *tailer* may read now; hands older files' open lines over to it first."""
        older = [t for t in self._before.get(id(tailer), []) if _rotated(t)]
        if not older:
            return True
        if not all(t.drained() for t in older):
            return False  # read the older file to its end first
        if os.fstat(tailer.fd).st_size == 0 or not tailer.decide_format():
            return True  # no whole line here yet: nothing to join
        for pred, succ in zip(older, [*older[1:], tailer], strict=True):
            self._hand_over(pred, succ)
        return True

    @staticmethod
    def _hand_over(pred: Tailer, succ: Tailer) -> None:
        if pred.decoder is None or not pred.decoder.busy or succ.decoder is None:
            return
        if succ.consumed:
            # The newer file was decoded before the older one was known to be rotated:
            # its first parts are already out, and adopting now would glue the open
            # lines to whatever comes next. They ship as they are (partial_timeout).
            if not pred.handover_refused:
                pred.handover_refused = True
                log.warning("%s: %d open line(s) cannot be joined with %s (read first); "
                            "they ship as they are", pred.path, len(pred.decoder.pending),
                            succ.path)  # fmt: skip
            return
        source = pred.entry_source()
        if source is None:
            return
        pending, held = pred.decoder.hand_over(source, pred.offset)
        succ.decoder.adopt(pending, held, succ.offset)
        log.debug("%s: %d open line(s) continue in %s", pred.path, len(pending), succ.path)
