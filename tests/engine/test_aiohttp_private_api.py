"""Tripwire: the private aiohttp members TimedConnector relies on are the ones we read.

``TimedConnector`` (opsq/engines/probe/transports.py) times TCP connect and the TLS
handshake apart by overriding ``TCPConnector._resolve_host`` and
``TCPConnector._wrap_create_connection`` (the latter replaced whole while a probe clock
runs), calling ``_wrap_existing_connection``, and reading ``_cached_hosts``. None of
that is aiohttp's public API, so pyproject.toml caps aiohttp at the tested minor and
this test fingerprints each member (its syntax tree, docstrings and formatting left
out) together with ``_create_direct_connection``, the caller that decides what the
overrides receive. When a new aiohttp changes any of them this fails, naming the
member: re-read it against TimedConnector, adapt the override, then record the new
fingerprint here (and raise the cap in pyproject.toml and constraints.txt).
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import inspect
import textwrap
from importlib import metadata

import aiohttp
import pytest
from aiohttp import connector

from opsq.engines.probe.transports import TimedConnector

TESTED_AIOHTTP = "3.14"
FINGERPRINTS = {
    "TCPConnector._resolve_host": "cfce898d2da8ea68",
    "TCPConnector._wrap_create_connection": "2710988407d0388f",
    "TCPConnector._wrap_existing_connection": "3a0e646e1819532f",
    "TCPConnector._create_direct_connection": "cfde05c32afc9b0f",
    "_DNSCacheTable": "09bbdf3dd0e360f5",
}


def _drop_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def fingerprint_source(source: str) -> str:
    """A hash of *source* that ignores comments, docstrings and formatting."""
    tree = _drop_docstrings(ast.parse(textwrap.dedent(source)))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def fingerprint(obj: object) -> str:
    return fingerprint_source(inspect.getsource(obj))  # type: ignore[arg-type]


def member(path: str) -> object:
    owner, _, name = path.partition(".")
    found = getattr(connector, owner)
    return getattr(found, name) if name else found


def test_installed_aiohttp_is_the_tested_minor() -> None:
    """The fingerprints below were taken from aiohttp 3.14.x, the minor the cap admits."""
    installed = metadata.version("aiohttp")
    assert installed.startswith(f"{TESTED_AIOHTTP}."), (
        f"aiohttp {installed} is installed but TimedConnector was checked against "
        f"{TESTED_AIOHTTP}: see this module's docstring"
    )


@pytest.mark.parametrize("path", sorted(FINGERPRINTS))
def test_private_aiohttp_member_is_unchanged(path: str) -> None:
    """Each private member TimedConnector overrides, calls or reads still has the code
    it was written against."""
    found = fingerprint(member(path))
    assert found == FINGERPRINTS[path], (
        f"aiohttp {metadata.version('aiohttp')} changed {path} (fingerprint {found}, "
        f"expected {FINGERPRINTS[path]}). TimedConnector in opsq/engines/probe/transports.py "
        "depends on it: re-read it, adapt TimedConnector, then update FINGERPRINTS."
    )


def test_timed_connector_still_overrides_and_reads_what_it_should() -> None:
    """The overridden names exist on aiohttp's TCPConnector with the keyword-only
    arguments the overrides take, and ``_cached_hosts`` is still a DNS cache table."""
    for name in ("_resolve_host", "_wrap_create_connection", "_wrap_existing_connection"):
        assert name in vars(aiohttp.TCPConnector), name
    for name in ("_resolve_host", "_wrap_create_connection"):
        assert name in vars(TimedConnector), f"TimedConnector no longer overrides {name}"
    wrap = inspect.signature(aiohttp.TCPConnector._wrap_create_connection).parameters
    assert {"addr_infos", "req", "timeout", "client_error"} <= wrap.keys()

    async def cache_table() -> object:
        made = TimedConnector(use_dns_cache=True)
        try:
            return made._cached_hosts
        finally:
            await made.close()

    table = asyncio.run(cache_table())
    assert isinstance(table, connector._DNSCacheTable)
    assert callable(table.expired)


def test_fingerprint_sees_a_changed_body_but_not_a_docstring() -> None:
    """The tripwire can fire: one changed statement changes the fingerprint, a reworded
    docstring, a comment or new line breaks do not."""
    before = 'def f(x):\n    """One."""\n    return x + 1  # a comment\n'
    reworded = 'def f(x):\n    """Two, longer."""\n\n    return (x +\n            1)\n'
    changed = 'def f(x):\n    """One."""\n    return x + 2\n'
    assert fingerprint_source(before) == fingerprint_source(reworded)
    assert fingerprint_source(before) != fingerprint_source(changed)
