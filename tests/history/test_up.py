"""`opsq up` runs `opsq web`: password in its environment, never on its command line."""

from __future__ import annotations

from pathlib import Path

from opsq.cli.up_cmd import UpOptions
from tests.deploy.test_up_plan import plan_for


def test_up_starts_the_status_page_with_a_generated_password(tmp_path: Path) -> None:
    """The web child runs `opsq web` with a generated password in OPSQ_WEB__PASSWORD;
    the banner prints the URL and the password once, argv never carries it."""
    children, plan = plan_for(tmp_path, UpOptions(metrics_port=0, flower_port=0, web_port=0))
    web = children["web"]
    assert web.argv[-2:] == ["opsq", "web"]
    password = web.env["OPSQ_WEB__PASSWORD"]
    assert len(password) >= 20
    assert not any(password in part for part in web.argv)
    port = web.env["OPSQ_WEB__PORT"]
    line = next(line for line in plan.lines if line.lstrip().startswith("web "))
    assert f"http://127.0.0.1:{port}/" in line
    assert password in line
    assert plan.web_url == f"http://127.0.0.1:{port}/"


def test_up_uses_the_configured_password_or_public_mode(tmp_path: Path) -> None:
    """web.password from the config is passed on and not printed; web.public runs the
    page without one and says it is public."""
    children, plan = plan_for(tmp_path, web={"password": "hunter22", "port": 0})
    assert children["web"].env["OPSQ_WEB__PASSWORD"] == "hunter22"
    assert not any("hunter22" in line for line in plan.lines)
    children, plan = plan_for(tmp_path, web={"public": True, "port": 0})
    assert "OPSQ_WEB__PASSWORD" not in children["web"].env
    assert any("public, read-only" in line for line in plan.lines)
