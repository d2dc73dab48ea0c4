"""A YAML mapping whose one big list is read an item at a time: bounded memory.

``yaml.load`` with libyaml builds the whole node tree (every scalar with two position
marks) before constructing anything: a 100,000-target file of 5.5 MB peaked at 320 MB
in ``opsq probe``. Here libyaml's parser (``CParser``) produces the events and PyYAML's
own ``Composer`` and ``SafeConstructor`` (the code ``yaml.safe_load`` runs, so anchors,
aliases, merge keys and tags behave the same) compose and construct one list item at a
time. Measured on the 2-core dev VM with the garbage collector paused: 10k targets 0.58 s
instead of 0.30 s (composing in Python costs), 100k targets 4.3 s instead of 3.8 s and
10 MB instead of 273 MB. :mod:`opsq.core.targets` therefore streams only large files.

Only documents shaped as the caller expects are streamed (a mapping whose *key* holds a
block or flow sequence); :meth:`MappingStream.open` returns False otherwise and the
caller reads the whole document as usual, which reports any problem the usual way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import (
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.resolver import Resolver


def _c_parser() -> type:
    try:
        from yaml._yaml import CParser  # noqa: PLC0415 - absent without libyaml
    except ImportError:
        return object
    return CParser


_Parser: Any = _c_parser()
AVAILABLE: bool = _Parser is not object
"""PyYAML built with libyaml: without it there is no streaming (and no speed to keep)."""


class _EventLoader(Composer, SafeConstructor, Resolver, _Parser):  # type: ignore[misc]
    """libyaml's events, PyYAML's Python composer and safe constructor."""

    def __init__(self, text: str) -> None:
        _Parser.__init__(self, text)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        Composer.__init__(self)

    def next_value(self) -> Any:
        """Compose and construct the next node (anchors stay known across calls)."""
        node = self.compose_node(None, None)  # type: ignore[arg-type]  # stubs: index is int
        value = self.construct_object(node, deep=True)
        self.constructed_objects.clear()  # nothing refers back to earlier items' objects
        return value


class MappingStream:
    """The top-level mapping of a YAML text, the list under *key* read item by item.

    ``before`` holds the keys that come before *key* once :meth:`open` returned True;
    ``after`` the keys that follow, once :meth:`items` is exhausted. Raises
    ``yaml.YAMLError`` for invalid YAML, as ``yaml.load`` does.
    """

    def __init__(self, text: str, key: str) -> None:
        if not AVAILABLE:
            raise RuntimeError("yaml streaming needs PyYAML built with libyaml")
        self._loader = _EventLoader(text)
        self._key = key
        self.before: dict[Any, Any] = {}
        self.after: dict[Any, Any] = {}
        self.count = 0

    def open(self) -> bool:
        """Read up to the start of *key*'s list; False if the document is not so shaped."""
        loader = self._loader
        for expected in (StreamStartEvent, DocumentStartEvent, MappingStartEvent):
            if not loader.check_event(expected):
                return False
            loader.get_event()
        while not loader.check_event(MappingEndEvent):
            key = loader.next_value()
            if key == self._key:
                if not loader.check_event(SequenceStartEvent):
                    return False
                loader.get_event()
                return True
            self.before[key] = loader.next_value()
        return False

    def items(self) -> Iterator[Any]:
        """Every item of the list in order; then the rest of the mapping into ``after``."""
        loader = self._loader
        try:
            while not loader.check_event(SequenceEndEvent):
                self.count += 1
                yield loader.next_value()
            loader.get_event()
            while not loader.check_event(MappingEndEvent):
                key = loader.next_value()
                self.after[key] = loader.next_value()
            loader.get_event()  # the mapping's end
            loader.get_event()  # the document's end
            if not loader.check_event(StreamEndEvent):
                raise yaml.YAMLError("expected a single document in the stream")
            if self._key in self.after:
                raise yaml.YAMLError(f"the key {self._key!r} appears twice")
        finally:
            loader.dispose()
