"""Under CI=true a skipped test fails the session.

``make test`` installs every tool the tests use (tests/system-packages.txt) and
``require_tool`` fails under CI instead of skipping, but a skip can still come from
elsewhere: a ``skipif`` on a missing binary, an ``importorskip``, a fixture that gives
up. CI's green must mean every test ran, so this plugin (loaded by tests/conftest.py)
records skips and, under ``CI=true``, turns the session's exit status into a failure
and lists them with their reasons. Outside CI a skip stays a skip (a developer's
machine may lack Docker). Expected failures (xfail) are not skips.
"""

from __future__ import annotations

import os

import pytest

SKIPPED: list[str] = []
"""``nodeid: reason`` of every skip in this session (one session per process)."""


def _under_ci() -> bool:
    return os.environ.get("CI") == "true"


def _record(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        SKIPPED.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module skipped as a whole (``pytest.skip(..., allow_module_level=True)``)."""
    _record(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _under_ci() and SKIPPED and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _under_ci() and SKIPPED:
        terminalreporter.section("skipped under CI=true: a failure, every test must run")
        for line in SKIPPED:
            terminalreporter.line(line, red=True)
