"""The observe endpoints and the log formats every opsq process uses.

Proved: /healthz is cheap and always 200, /readyz names the failing check with a 503,
/metrics passes promtool, the /debug endpoints exist only on loopback unless allowed
(tracemalloc starts on demand, asyncio tasks of registered loops are listed), and log
lines in both formats never carry a secret: not in the message, not in JSON extras,
not in a traceback.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import threading
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from opsq.core.logsetup import (
    JsonFormatter,
    Redacted,
    TextFormatter,
    make_handler,
    redact_handlers,
)
from opsq.core.observe import ObserveServer
from tests.support.tools import require_tool


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def server() -> Iterator[ObserveServer]:
    state = {"redis": True}
    srv = ObserveServer("127.0.0.1", 0, ready_checks={"redis": lambda: state["redis"]})
    srv.state = state  # type: ignore[attr-defined]
    srv.start()
    yield srv
    srv.stop()


def test_healthz_is_200_and_readyz_reports_each_check(server: ObserveServer) -> None:
    """Readiness flips to 503 naming the failing check; liveness does not depend on it."""
    base = f"http://127.0.0.1:{server.port}"
    assert get(f"{base}/healthz") == (200, "ok\n")
    assert get(f"{base}/readyz")[0] == 200
    server.state["redis"] = False  # type: ignore[attr-defined]
    status, body = get(f"{base}/readyz")
    assert status == 503
    assert json.loads(body) == {"redis": False}
    assert get(f"{base}/healthz")[0] == 200


def test_a_raising_check_counts_as_not_ready() -> None:
    """A check that raises (Redis down) is reported false, not a 500."""

    def boom() -> bool:
        raise ConnectionError("redis://:secret@db:6379 refused")

    srv = ObserveServer("127.0.0.1", 0, ready_checks={"redis": boom}).start()
    try:
        status, body = get(f"http://127.0.0.1:{srv.port}/readyz")
    finally:
        srv.stop()
    assert status == 503
    assert "secret" not in body


def test_metrics_pass_promtool(server: ObserveServer) -> None:
    """The exposition text is valid for Prometheus (promtool check metrics)."""
    promtool = require_tool("promtool")
    status, body = get(f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200
    check = subprocess.run([promtool, "check", "metrics"], input=body.encode(),
                           capture_output=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_debug_endpoints_only_on_loopback_unless_allowed() -> None:
    """Bound to all interfaces, /debug/* is 404 unless allow_remote_debug is set."""
    public = ObserveServer("0.0.0.0", 0).start()
    allowed = ObserveServer("0.0.0.0", 0, allow_remote_debug=True).start()
    try:
        assert get(f"http://127.0.0.1:{public.port}/debug/stacks")[0] == 404
        assert get(f"http://127.0.0.1:{public.port}/healthz")[0] == 200
        assert get(f"http://127.0.0.1:{allowed.port}/debug/stacks")[0] == 200
    finally:
        public.stop()
        allowed.stop()


def test_debug_stacks_tasks_and_tracemalloc(server: ObserveServer) -> None:
    """Thread stacks, asyncio tasks of a registered loop, tracemalloc started on demand."""
    base = f"http://127.0.0.1:{server.port}"
    loop = asyncio.new_event_loop()
    started = threading.Event()
    done = threading.Event()

    async def sleeper() -> None:
        started.set()
        while not done.is_set():
            await asyncio.sleep(0.05)

    def run() -> None:
        loop.run_until_complete(loop.create_task(sleeper(), name="opsq-demo-sleeper"))

    thread = threading.Thread(target=run, name="loop-thread", daemon=True)
    thread.start()
    server.loops.append(loop)
    try:
        assert started.wait(10)
        assert "loop-thread" in get(f"{base}/debug/stacks")[1]
        assert "opsq-demo-sleeper" in get(f"{base}/debug/tasks")[1]
        first = get(f"{base}/debug/tracemalloc")[1]
        second = get(f"{base}/debug/tracemalloc")[1]
        assert "started" in first
        assert "size=" in second
    finally:
        tracemalloc.stop()
        done.set()
        thread.join(10)
        loop.close()


def _log(fmt: str, emit: callable) -> str:  # type: ignore[valid-type]
    stream = io.StringIO()
    handler = make_handler(fmt)
    handler.stream = stream  # type: ignore[attr-defined]
    logger = logging.getLogger(f"opsq.test.{fmt}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    emit(logger)
    return stream.getvalue()


def test_json_lines_redact_message_extras_and_tracebacks() -> None:
    """A password in a URL, a token field or an exception message never reaches the log."""

    def emit(logger: logging.Logger) -> None:
        logger.warning(
            "cannot reach %s", "redis://:hunter2@db:6379/0",
            extra={"api_token": "tok-123", "sink": "http://u:pw9@loki/push", "batch": 7},
        )  # fmt: skip
        try:
            raise ConnectionError("Error connecting to redis://:hunter2@db:6379/0")
        except ConnectionError:
            logger.exception("lost Redis")

    lines = [json.loads(line) for line in _log("json", emit).splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert set(first) >= {"ts", "level", "logger", "msg"}
    assert first["level"] == "warning"
    assert first["msg"] == "cannot reach redis://:***@db:6379/0"
    assert first["api_token"] == "***"
    assert first["sink"] == "http://u:***@loki/push"
    assert first["batch"] == 7
    assert "ConnectionError" in second["exc"]
    joined = json.dumps(lines)
    for secret in ("hunter2", "tok-123", "pw9"):
        assert secret not in joined


def test_text_lines_redact_tracebacks_too() -> None:
    """The text format masks the password in the message and in the traceback."""

    def emit(logger: logging.Logger) -> None:
        try:
            raise OSError("redis://default:hunter2@db:6379 refused")
        except OSError:
            logger.exception("failed for %s", "redis://:hunter2@db/0")

    text = _log("text", emit)
    assert "hunter2" not in text
    assert "OSError" in text
    assert "redis://default:***@db:6379" in text


def test_text_redaction_hides_a_token_given_as_the_url_user() -> None:
    """``https://TOKEN@host`` in a message loses the token, as redact_url does."""

    def emit(logger: logging.Logger) -> None:
        logger.warning("push to %s failed", "https://ghp_s3cret@git.example/repo")

    text = _log("text", emit)
    assert "ghp_s3cret" not in text
    assert "https://***@git.example/repo" in text


def test_formatters_are_the_documented_ones() -> None:
    """--log-format json -> JsonFormatter, anything else -> TextFormatter."""
    assert isinstance(make_handler("json").formatter, JsonFormatter)
    assert isinstance(make_handler("text").formatter, TextFormatter)


def test_celery_handlers_keep_their_format_but_redact() -> None:
    """redact_handlers wraps a foreign formatter (Celery's text format) with redaction."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(levelname)s/%(processName)s] %(message)s"))
    logger = logging.getLogger("opsq.test.celerylike")
    logger.handlers[:] = [handler]
    logger.propagate = False
    redact_handlers(logger)
    redact_handlers(logger)  # idempotent: no double wrapping
    try:
        raise OSError("redis://:hunter2@db:6379 refused")
    except OSError:
        logger.exception("consumer: cannot connect to %s", "redis://:hunter2@db:6379/0")
    text = stream.getvalue()
    assert text.startswith("[ERROR/MainProcess] consumer: cannot connect to redis://:***@db")
    assert "hunter2" not in text
    assert isinstance(handler.formatter, Redacted)
    assert not isinstance(handler.formatter.inner, Redacted)
