"""Finding the copy that logrotate's ``copytruncate`` made, so no line is lost with it.

``copytruncate`` copies ``app.log`` to a rotated name (``app.log.1``,
``app.log-20240101``, ...) and then truncates ``app.log`` in place. Lines written
after the agent's last read and before the truncate exist only in that copy. Like
Filebeat's copytruncate strategy (filestream ``rotation.external.strategy.copytruncate``,
which "continues" the original's cursor on the newest rotated file), the agent looks
for the copy when it sees the file shrink and reads the copy from the original's
offset to its end, under the original's identity: the record ids go on exactly
where the original stopped, so nothing is shipped twice and nothing is skipped.

A sibling is the copy when its name is the original's name followed by a suffix
matching ``copytruncate_suffix`` and its first bytes hash to the original's
fingerprint (the same test that recognises the original itself). Among several,
the newest (mtime) wins. Compressed copies (``.gz``) cannot be read at an offset:
use ``delaycompress`` with ``copytruncate`` (logrotate's own advice for readers).

The same test keeps a copy from being shipped again when the user's globs match
rotated names (``app.log*``): a rotated-name file whose first bytes are the start
of a file the agent is tailing is a copy in the making, and is left to the
truncation handler instead of being read from 0 as a new file.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from agents.identity import FileIdentity, matches


@dataclass(slots=True)
class Copy:
    """An open copy of a truncated file (the caller owns ``fd``)."""

    path: str
    fd: int
    st: os.stat_result


class RotatedNames:
    """Which sibling names are rotated names of a file (``<name><suffix>``)."""

    def __init__(self, suffix_pattern: str) -> None:
        self.suffix = re.compile(suffix_pattern)

    def is_rotated(self, original: str, candidate: str) -> bool:
        """Whether *candidate* (a path) is a rotated name of *original* (a path)."""
        if os.path.dirname(original) != os.path.dirname(candidate):
            return False
        base, name = os.path.basename(original), os.path.basename(candidate)
        return (
            len(name) > len(base)
            and name.startswith(base)
            and self.suffix.fullmatch(name[len(base) :]) is not None
        )

    def original_of(self, rotated: str) -> str | None:
        """The existing file *rotated* is a rotated name of (the longest such), or None."""
        directory, name = os.path.split(rotated)
        for end in range(len(name) - 1, 0, -1):
            original = os.path.join(directory, name[:end])
            if self.is_rotated(original, rotated) and os.path.isfile(original):
                return original
        return None

    def siblings(self, original: str) -> list[str]:
        """Rotated names of *original* present now (unsorted)."""
        directory = os.path.dirname(original) or "."
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        base = os.path.basename(original)
        return [
            os.path.join(directory, name)
            for name in names
            if name.startswith(base) and self.is_rotated(original, os.path.join(directory, name))
        ]


def find_copy(names: RotatedNames, original: str, identity: FileIdentity) -> Copy | None:
    """Open the newest rotated sibling of *original* that starts like *identity*."""
    best: Copy | None = None
    for path in names.siblings(original):
        copy = _open_if_copy(path, identity)
        if copy is None:
            continue
        if best is None or copy.st.st_mtime_ns > best.st.st_mtime_ns:
            if best is not None:
                os.close(best.fd)
            best = copy
        else:
            os.close(copy.fd)
    return best


def _open_if_copy(path: str, identity: FileIdentity) -> Copy | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        same_file = (st.st_dev, st.st_ino) == (identity.dev, identity.ino)
        if not same_file and stat.S_ISREG(st.st_mode) and matches(fd, identity):
            return Copy(path, fd, st)
    except OSError:
        pass
    os.close(fd)
    return None


def starts_like(fd: int, head: bytes) -> bool:
    """Whether the open file's bytes so far are a prefix of *head*, or *head* of them.

    A copy in the making may hold fewer bytes than the original's fingerprint
    covers; an empty file may become a copy. Both count as "starts like".
    """
    if not head:
        return False
    data = os.pread(fd, len(head), 0)
    return head.startswith(data)
