"""One backoff helper and one Redis error policy: a tripwire for copies.

There were six backoff formulas (full, equal and "x0.8-1.2" jitter, plain doubling) and
six Redis error classifications with different rules (WRONGTYPE retried for an hour in
one place, re-raised in another). This scan of the source (AST, not text) fails when
either appears outside :mod:`opsq.core.backoff` and :mod:`opsq.core.redis_errors`:

- a backoff or jitter formula: ``2 ** n``, ``min(cap, delay * 2)``, a call of a random
  distribution (``random.uniform``, ``random.random()``, ``rng()``...);
- a Redis error classification: ``except``/``isinstance`` on redis-py or kombu
  exception classes, or comparing reply text with a Redis error code.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("opsq", "tasks", "producers", "agents")
POLICY_MODULES = {"opsq/core/backoff.py", "opsq/core/redis_errors.py"}

ALLOWED: dict[tuple[str, str], str] = {
    # (file, rule): why it is not a copy of the policy.
    ("opsq/core/redis_server.py", "redis-except"): "waiting for a server it just started "
    "to answer PING: LOADING and refused connections mean 'not yet', nothing else",
}

RANDOM_CALLS = {"uniform", "random", "expovariate", "triangular", "gauss", "betavariate"}
REDIS_MODULES = ("redis", "kombu")
REPLY_CODES = frozenset(
    "OOM READONLY LOADING TRYAGAIN BUSY MASTERDOWN CLUSTERDOWN NOREPLICAS WRONGTYPE NOSCRIPT "
    "NOGROUP NOAUTH WRONGPASS NOPERM".split()
)
OPSQ_REDIS_ERRORS = {"RedisUnavailable", "RedisCommandError", "TemporaryError", "PermanentError"}
FAILURE_COUNTERS = ("attempt", "retr", "fail", "tries", "restart", "error")
"""What a backoff exponent counts."""
CONTROL_FLOW = {"WatchError"}
"""Not a classification: WATCH/MULTI lost a race, the caller runs its transaction again."""


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in POLICY_MODULES:
                yield rel, ast.parse(path.read_text(encoding="utf-8"), filename=rel)


def _redis_names(tree: ast.Module) -> set[str]:
    """Local names bound to redis-py/kombu modules or classes by this file's imports."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in REDIS_MODULES:
                    names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in REDIS_MODULES:
                names.update(alias.asname or alias.name for alias in node.names)
    return names


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _mentions_redis_class(node: ast.expr | None, names: set[str]) -> bool:
    if node is None:
        return False
    parts = node.elts if isinstance(node, ast.Tuple) else [node]
    return any(_root(part) in names and _name(part) not in CONTROL_FLOW for part in parts)


def _name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _counts_failures(node: ast.expr) -> bool:
    """``2 ** attempt`` (a backoff), not ``2**20`` (MiB) or ``2 ** (i / 3)`` (buckets)."""
    words = {_name(n).lower() for n in ast.walk(node) if isinstance(n, ast.Name | ast.Attribute)}
    return any(w in name for name in words for w in FAILURE_COUNTERS)


def _is_two(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value in (2, 2.0)


def _violations(rel: str, tree: ast.Module) -> Iterator[tuple[str, int, str]]:
    names = _redis_names(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and _is_two(node.left):
            if _counts_failures(node.right):
                yield "backoff-formula", line, ast.unparse(node)
        elif isinstance(node, ast.Call):
            yield from _call_violations(node, names, line)
        elif isinstance(node, ast.ExceptHandler) and _mentions_redis_class(node.type, names):
            yield "redis-except", line, f"except {ast.unparse(node.type)}"  # type: ignore[arg-type]
        elif isinstance(node, ast.ExceptHandler) and _classifies_a_reply(node):
            yield "redis-reply-text", line, "an error reply mapped without reply_error()"
        elif isinstance(node, ast.Compare) and _compares_reply_code(node):
            yield "redis-reply-text", line, ast.unparse(node)


def _call_violations(node: ast.Call, names: set[str], line: int) -> Iterator[tuple[str, int, str]]:
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in RANDOM_CALLS:
        yield "jitter-formula", line, ast.unparse(node)
    elif isinstance(func, ast.Name) and func.id == "rng":
        yield "jitter-formula", line, ast.unparse(node)
    elif isinstance(func, ast.Name) and func.id == "min":
        for arg in node.args:
            if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Mult):
                if _is_two(arg.left) or _is_two(arg.right):
                    yield "backoff-formula", line, ast.unparse(node)
    elif isinstance(func, ast.Name) and func.id == "isinstance" and len(node.args) == 2:
        if _mentions_redis_class(node.args[1], names):
            yield "redis-except", line, ast.unparse(node)
    elif isinstance(func, ast.Attribute) and func.attr == "startswith" and node.args:
        if _has_reply_code(node.args[0]):
            yield "redis-reply-text", line, ast.unparse(node)


def _classifies_a_reply(handler: ast.ExceptHandler) -> bool:
    """``except ErrorReply: raise RedisUnavailable(...)`` (the agent's own RESP client)."""
    if handler.type is None or "ErrorReply" not in ast.unparse(handler.type):
        return False
    built = {_name(n.func) for n in ast.walk(handler) if isinstance(n, ast.Call)}
    return bool(built & OPSQ_REDIS_ERRORS) and "reply_error" not in built


def _has_reply_code(node: ast.expr) -> bool:
    for const in ast.walk(node):
        if isinstance(const, ast.Constant) and isinstance(const.value, str):
            if const.value.split(" ")[0].lstrip("-") in REPLY_CODES:
                return True
    return False


def _compares_reply_code(node: ast.Compare) -> bool:
    return any(isinstance(op, ast.In | ast.Eq) for op in node.ops) and (
        _has_reply_code(node.left) or any(_has_reply_code(c) for c in node.comparators)
    )


def test_no_backoff_or_redis_error_policy_outside_the_shared_modules() -> None:
    """Every retry loop uses opsq.core.backoff; every Redis call site opsq.core.redis_errors."""
    found = [
        f"{rel}:{line}: {rule}: {code}"
        for rel, tree in _sources()
        for rule, line, code in _violations(rel, tree)
        if (rel, rule) not in ALLOWED
    ]
    assert not found, "use opsq.core.backoff / opsq.core.redis_errors instead:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "snippet",
    [
        "delay = min(cap, base * 2 ** attempt)",
        "delay = self.base * 2**self.attempt",
        "countdown = RETRY_BASE_S * 2 ** self.request.retries",
        "delay = min(BACKOFF_MAX_S, delay * 2) * random.uniform(0.8, 1.2)",
        "pause = rng() * ceiling",
        "import redis\ntry:\n    f()\nexcept redis.ResponseError:\n    pass",
        "from redis.exceptions import ReadOnlyError\nok = isinstance(e, ReadOnlyError)",
        "from kombu.exceptions import OperationalError\ntry:\n    f()\n"
        "except OperationalError:\n    pass",
        "transient = str(exc).startswith(('NOGROUP', 'MASTERDOWN'))",
        "if 'WRONGTYPE' in str(exc):\n    raise",
        "try:\n    f()\nexcept ErrorReply as exc:\n    raise RedisUnavailable(str(exc)) from exc",
    ],
)
def test_the_scan_recognises_each_kind_of_copy(snippet: str) -> None:
    """The tripwire can fail: each of today's old copies, as written, is caught."""
    assert list(_violations("x.py", ast.parse(snippet)))


def test_the_scan_leaves_ordinary_code_alone() -> None:
    """Policy calls, WatchError-free arithmetic and unrelated strings are not flagged."""
    snippet = (
        "from opsq.core.redis_errors import redis_errors, ignore_reply\n"
        "with redis_errors('x', temporary={'NOGROUP'}), ignore_reply('BUSYGROUP'):\n"
        "    area = width * 2 + min(a, b)\n"
        "    mib = used / 2**20 + E * 2.0 ** (index / 3)\n"
        "    ok = name.startswith('OK')\n"
        "try:\n    f()\nexcept ErrorReply as exc:\n"
        "    raise reply_error(str(exc), 'XADD') from exc\n"
    )
    assert not list(_violations("x.py", ast.parse(snippet)))
