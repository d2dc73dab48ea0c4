"""`opsq probe` refuses bad targets files with exit 2 and a message naming the problem.

Nothing is enqueued for a bad file: the Redis URL points at a port where nothing
listens, so reaching Redis would fail with exit 1 instead of 2.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from opsq.cli.main import main
from opsq.core.redis_server import free_port

GOOD_ENTRY = "  - name: api\n    url: http://127.0.0.1:8080/healthz\n"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def _probe_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, *flags: str
) -> tuple[int, str, str, Path]:
    """`opsq probe` of a file holding *content*, with a Redis URL where nothing listens
    (reaching Redis would exit 1, not 2): (exit code, stdout, stderr, the file)."""
    path = tmp_path / "targets.yaml"
    path.write_text(content)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    return (*_run(["probe", str(path), *flags, "--redis-url", dead_redis], capsys), path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(
            "targets:\n  - name: api\n    url: http://127.0.0.1/\n    retries: many\n",
            "targets[0] (name 'api').retries: Input should be a valid integer",
            id="wrong-type",
        ),
        pytest.param(
            "targets:\n  - name: api\n    url: ftp://example.com/\n",
            "targets[0] (name 'api').url: url 'ftp://example.com/' must start with http://",
            id="bad-url",
        ),
        pytest.param(
            "targets:\n  - name: api\n    url: http://127.0.0.1/\n    timout: 2s\n",
            "targets[0] (name 'api').timout: unknown field",
            id="unknown-field",
        ),
        pytest.param("", "the file is empty", id="empty-file"),
        pytest.param("targets: [name: {\n", "not valid YAML at line", id="not-yaml"),
        pytest.param(
            "targets: []\n", "field targets: List should have at least 1 item", id="no-targets"
        ),
        pytest.param(
            "targets:\n" + GOOD_ENTRY + GOOD_ENTRY,
            "target 'api' with url http://127.0.0.1:8080/healthz appears twice",
            id="duplicate-target",
        ),
        pytest.param(
            "targets:\n  - name: dns\n    url: dns://192.0.2.1\n",
            "targets[0] (name 'dns').url: url 'dns://192.0.2.1' names the address 192.0.2.1",
            id="dns-ip-literal",
        ),
        pytest.param(
            "targets:\n  - name: tls\n    url: https://x/\n    ca_file: /nonexistent/ca.pem\n",
            "targets[0] (name 'tls').ca_file: ca_file '/nonexistent/ca.pem' does not exist",
            id="missing-ca-file",
        ),
        pytest.param(
            "targets:\n  - name: api\n    url: http://127.0.0.1/\n    expect: {status: [700]}\n",
            "targets[0] (name 'api').expect.status: Value error, status range 700",
            id="bad-status",
        ),
    ],
)
def test_bad_targets_file_exits_2_naming_file_entry_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    code, out, err, path = _probe_content(tmp_path, capsys, content)
    assert code == 2
    assert str(path) in err
    assert expected.replace("Value error, ", "") in err
    assert out == ""


@pytest.mark.parametrize(
    "entry",
    [
        '{name: a, url: "https://user:SECRET1@127.0.0.1:badport/x"}',
        '{name: a, url: "ftp://user:SECRET1@127.0.0.1/x"}',
        '{name: a, url: "http://user:SEC/RET1@127.0.0.1/x"}',
        '{name: a, url: "tcp://user:SECRET1@127.0.0.1"}',
        '{name: a, url: "http://127.0.0.1/?access_token=SECRET1", expect: {rcode: [NOERROR]}}',
        '{name: a, url: "http://127.0.0.1/?access_token=SECRET1"}',
    ],
)
def test_bad_targets_never_print_secrets_in_their_urls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: str
) -> None:
    """A refused target's URL is quoted redacted, as results are (hostile check 89 F2).

    The last case is a duplicate entry."""
    code, _, err, _ = _probe_content(tmp_path, capsys, f"targets:\n  - {entry}\n  - {entry}\n")
    assert code == 2
    assert "targets[" in err
    assert "SECRET1" not in err
    assert "SEC/" not in err


@pytest.mark.parametrize("timeout", ["nan", "-1", "0", "inf"])
def test_a_wait_timeout_that_is_not_a_positive_number_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    """`--timeout nan` waited forever and `-1` enqueued a run then gave up at once (exit 1,
    every target PENDING); both are refused before anything is sent (hostile check 89 F3).
    The dead Redis URL would make any attempt to enqueue exit 1."""
    content = "targets:\n" + GOOD_ENTRY
    code, out, err, _ = _probe_content(tmp_path, capsys, content, "--wait", "--timeout", timeout)
    assert code == 2
    assert "--timeout" in err
    assert "not a positive number of seconds" in err
    assert out == ""


@pytest.mark.parametrize("name", ["two\\nlines", "tab\\there", "esc\\e[2Jclear", "del\\x7f"])
def test_a_name_with_control_characters_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A newline split a row of the table in two, an ESC reached the terminal as an escape
    sequence; such names are refused with the fix (hostile check 89 F4)."""
    content = f'targets:\n  - {{name: "{name}", url: "http://127.0.0.1/"}}\n'
    code, _, err, _ = _probe_content(tmp_path, capsys, content)
    assert code == 2
    assert "targets[0]" in err
    assert "holds the control character" in err
    assert "fix: remove newlines" in err
    assert "\x1b" not in err


def test_missing_targets_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["probe", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2
    assert "nope.yaml: file not found" in err


def test_unreachable_redis_exits_1_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text("targets:\n" + GOOD_ENTRY)
    port = free_port()
    code, out, err = _run(
        ["probe", str(path), "--redis-url", f"redis://:s3cret@127.0.0.1:{port}/0"], capsys
    )
    assert code == 1
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in err
    assert "Traceback" not in err
    assert "s3cret" not in err + out


def test_wait_timeout_with_no_worker_reports_pending_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    """Nobody consumes the queue: after --timeout the partial summary says PENDING."""
    path = tmp_path / "targets.yaml"
    path.write_text("targets:\n" + GOOD_ENTRY)
    argv = ["probe", str(path), "--wait", "--timeout", "0.5", "--redis-url", redis_url]
    code = main(argv)
    out, _ = capsys.readouterr()
    assert code == 1
    assert "1 targets, 0 up, 0 down, 1 PENDING" in out


def test_runs_show_of_an_unknown_run_exits_1(
    capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    code = main(["runs", "show", "20200101T000000-000000", "--redis-url", redis_url])
    _, err = capsys.readouterr()
    assert code == 1
    assert "run 20200101T000000-000000 not found (unknown or expired)" in err


def test_ctrl_c_while_waiting_says_the_run_goes_on_and_exits_130(
    tmp_path: Path, redis_url: str
) -> None:
    """SIGINT to `opsq probe --wait` (no worker, so it waits) stops the waiting only: it
    names the run that stays queued for the workers and how to look at it later."""
    path = tmp_path / "targets.yaml"
    path.write_text("targets:\n" + GOOD_ENTRY)
    argv = [sys.executable, "-m", "opsq", "probe", str(path), "--wait", "--redis-url", redis_url]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "run <id>: 1 targets in 1 batches ..." once enqueued
    run_id = first.split()[1].rstrip(":")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, first + err
    assert f"run {run_id} goes on on the workers" in err
    assert f"opsq runs show {run_id}" in err
    assert "Traceback" not in err
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen("probes") == 1  # the batch is still queued for a worker
    finally:
        client.close()
