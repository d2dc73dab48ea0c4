"""File identity: device + inode + a fingerprint of the first bytes.

An inode number alone is not an identity: when a rotated file is deleted its inode is
soon reused by a new file, and an agent that keys offsets by inode resumes the new
file at the old file's offset (a known Vector/Promtail failure). The fingerprint is a
hash of the first ``FINGERPRINT_BYTES`` bytes, or of all of them while the file is
shorter; how many bytes were hashed is kept beside it so a restart re-hashes exactly
that prefix. The identity is fixed the first time a file has any bytes, so record ids
(``<fid>:<offset>``) stay stable for the file's whole life and dedupe across restarts.

Limitation: two files on the same device and inode whose first hashed bytes are equal
are indistinguishable. With 1 KiB (or the whole first line) of timestamped log text
that needs identical content, which is the case where resuming is harmless anyway.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

FINGERPRINT_BYTES = 1024


@dataclass(frozen=True, slots=True)
class FileIdentity:
    dev: int
    ino: int
    fingerprint: str
    """Hex digest of the first ``fp_len`` bytes."""
    fp_len: int

    @property
    def fid(self) -> str:
        """The ``<dev>:<inode>:<fingerprint hex>`` form used in stream entries."""
        return f"{self.dev}:{self.ino}:{self.fingerprint}"


def digest(prefix: bytes) -> str:
    # The length is part of the hash input so a 10-byte prefix never equals a 1 KiB one.
    return hashlib.blake2b(prefix, digest_size=8, person=len(prefix).to_bytes(8, "big")).hexdigest()


def identify(fd: int, st: os.stat_result) -> FileIdentity | None:
    """The identity of an open file, or None while it is empty (nothing to hash yet)."""
    size = min(st.st_size, FINGERPRINT_BYTES)
    if size <= 0:
        return None
    prefix = os.pread(fd, size, 0)
    if not prefix:
        return None
    return FileIdentity(st.st_dev, st.st_ino, digest(prefix), len(prefix))


def matches(fd: int, identity: FileIdentity) -> bool:
    """Whether the open file still starts with the bytes *identity* was made from."""
    prefix = os.pread(fd, identity.fp_len, 0)
    return len(prefix) == identity.fp_len and digest(prefix) == identity.fingerprint
