"""cert_days_left reaches the user: `opsq probe --output json`, the table, `runs show`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from opsq.cli.main import main
from tests.engine.conftest import ServerState, server_context, serving
from tests.pipeline.conftest import write_targets
from tests.support.workers import Worker


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The opsq entry point in-process: (exit code, stdout)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return int(code or 0), capsys.readouterr().out


@pytest.mark.slow
def test_cert_days_left_in_json_table_and_runs_show(
    start_worker: Callable[..., Worker],
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 9: the days left were computed and stored but shown nowhere."""
    start_worker()
    ca = trustme.CA()
    with serving(ServerState(), [server_context(ca, 5), None]) as (tls_port, plain_port):
        targets = [
            {"name": "tls", "url": f"https://127.0.0.1:{tls_port}/ok", "verify_tls": False},
            {"name": "plain", "url": f"http://127.0.0.1:{plain_port}/ok"},
        ]
        path = write_targets(tmp_path / "t.yaml", targets)
        code, out = _cli(["probe", str(path), "--wait", "--output", "json",
                          "--redis-url", redis_url], capsys)  # fmt: skip
    assert code == 0, out
    summary = json.loads(out)
    tls, plain = summary["results"]
    assert 4.9 < tls["cert_days_left"] <= 5.0
    assert plain["cert_days_left"] is None
    code, table = _cli(["runs", "show", summary["run_id"], "--redis-url", redis_url], capsys)
    assert code == 0
    header, tls_row, plain_row = table.splitlines()[:3]
    assert "CERT" in header.split()
    assert re.search(r"\s(4\.9|5\.0)d(\s|$)", tls_row), tls_row
    assert re.search(r"\s-(\s|$)", plain_row.split("200", 1)[1]), plain_row
    code, shown = _cli(["runs", "show", summary["run_id"], "--output", "json",
                        "--redis-url", redis_url], capsys)  # fmt: skip
    assert json.loads(shown)["results"][0]["cert_days_left"] == tls["cert_days_left"]
