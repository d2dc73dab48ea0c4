"""Which files ``paths`` matches: a bounded glob walk that never follows directory links.

Python's ``glob.glob(..., recursive=True)`` follows directory symlinks under ``**``:
two links to ``.`` in one directory make it visit 2^depth paths, at 100% CPU, with no
way to stop it. This walker expands one path segment at a time with ``os.scandir``:

- ``**`` matches zero or more directories, at most ``max_depth`` deep, and never
  descends into a directory symlink (Filebeat expands ``**`` to a fixed depth too);
- other wildcard segments never go through a directory symlink either; literal
  segments are the user's own path and are resolved by the OS as written;
- the stop flag is checked at every directory, so SIGTERM is never stuck in a walk;
- a file symlink is skipped unless ``follow_symlinks`` is on (Filebeat's
  ``prospector.scanner.symlinks`` default), and then only when its target resolves
  under an allowed root (``symlink_roots``, default the fixed part of each pattern):
  a link in a log directory must not ship ``/etc/shadow`` to the log backend.

Wildcards do not match names starting with ``.`` unless the segment does (glob's rule).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Notice = Callable[[str, str], None]
"""``(path, message)`` for a path skipped on purpose; the caller logs it once."""


@dataclass(frozen=True, slots=True)
class Found:
    path: str
    """The path as matched (a link's own path when followed: what the user globbed)."""
    real: str
    """What to open: the path itself, or a followed link's resolved target."""
    st: os.stat_result


def fixed_root(pattern: str) -> tuple[str, bool]:
    """The directory before the first wildcard segment, and whether one follows."""
    parts = os.path.expanduser(pattern).split(os.sep)
    fixed: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    root = os.sep.join(fixed) or ("/" if pattern.startswith("/") else ".")
    return root, len(fixed) < len(parts) - 1


class Finder:
    def __init__(
        self,
        patterns: list[str],
        exclude: list[str],
        *,
        max_depth: int,
        follow_symlinks: bool,
        symlink_roots: list[str],
        stop: threading.Event,
        notice: Notice,
    ) -> None:
        self.patterns = [os.path.expanduser(p) for p in patterns]
        self.exclude = exclude
        self.max_depth = max_depth
        self.follow_symlinks = follow_symlinks
        roots = symlink_roots or [fixed_root(p)[0] for p in self.patterns]
        self.roots = [os.path.realpath(r) for r in roots]
        self.stop = stop
        self.notice = notice

    def find(self) -> list[Found]:
        """Every matching regular file, sorted by path (an original before ``name.1``)."""
        found: dict[str, Found] = {}
        for pattern in self.patterns:
            for path in self._expand(pattern):
                if path not in found and not self._excluded(path):
                    item = self._check(path)
                    if item is not None:
                        found[path] = item
        return [found[p] for p in sorted(found)]

    def _excluded(self, path: str) -> bool:
        name = os.path.basename(path)
        return any(fnmatch.fnmatch(path, ex) or fnmatch.fnmatch(name, ex) for ex in self.exclude)

    # --- expansion --------------------------------------------------------------------
    def _expand(self, pattern: str) -> Iterator[str]:
        if not glob.has_magic(pattern):
            if os.path.lexists(pattern):
                yield pattern
            return
        absolute = pattern.startswith(os.sep)
        parts = [p for p in pattern.split(os.sep) if p]
        yield from self._match("/" if absolute else "", parts, 0)

    def _match(self, base: str, parts: list[str], depth: int) -> Iterator[str]:
        if self.stop.is_set() or not parts:
            return
        part, rest = parts[0], parts[1:]
        if part == "**":
            yield from self._match(base, rest, depth)  # zero directories
            if depth < self.max_depth:
                for sub in self._subdirs(base, "*"):
                    yield from self._match(sub, parts, depth + 1)
        elif not glob.has_magic(part):
            path = os.path.join(base, part) if base else part
            if not rest:
                if os.path.lexists(path):
                    yield path
            elif os.path.isdir(path):
                yield from self._match(path, rest, depth)
        elif rest:
            for sub in self._subdirs(base, part):
                yield from self._match(sub, rest, depth)
        else:
            yield from self._entries(base, part)

    def _scan(self, base: str, part: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(base or ".") as it:
                entries = list(it)
        except OSError:
            return []
        hidden_ok = part.startswith(".")
        return [
            e
            for e in entries
            if (hidden_ok or not e.name.startswith(".")) and fnmatch.fnmatchcase(e.name, part)
        ]

    def _subdirs(self, base: str, part: str) -> Iterator[str]:
        """Matching subdirectories, never through a symlink (the loop guard)."""
        for entry in self._scan(base, part):
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield os.path.join(base, entry.name) if base else entry.name
            except OSError:
                continue

    def _entries(self, base: str, part: str) -> Iterator[str]:
        for entry in self._scan(base, part):
            yield os.path.join(base, entry.name) if base else entry.name

    # --- what a match is --------------------------------------------------------------
    def _check(self, path: str) -> Found | None:
        try:
            lst = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(lst.st_mode):
            return self._link(path)
        if stat.S_ISDIR(lst.st_mode):
            return None  # a directory matched by a wildcard is just not a log file
        if not stat.S_ISREG(lst.st_mode):
            self.notice(path, f"{path} is not a regular file; skipping it")
            return None
        return Found(path, path, lst)

    def _link(self, path: str) -> Found | None:
        if not self.follow_symlinks:
            self.notice(path, f"{path} is a symlink; not followed (follow_symlinks is off)")
            return None
        real = os.path.realpath(path)
        if not any(
            real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots
        ):
            self.notice(path, f"{path} links to {real}, outside {self.roots}; not followed")
            return None
        try:
            st = os.stat(real, follow_symlinks=False)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return Found(path, real, st)
