"""Settings that protect delivery: visibility timeout vs time limits, JSON only."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsq.core.celeryconf import celery_config
from opsq.core.errors import ConfigError
from opsq.core.settings import load_settings


def test_visibility_timeout_must_exceed_the_hard_time_limit(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("visibility_timeout: 60\nprobes: {soft_time_limit: 50, time_limit: 60}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert "visibility_timeout (60s) must exceed probes.time_limit (60s)" in str(info.value)


def test_soft_time_limit_must_be_below_the_hard_one(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("probes: {soft_time_limit: 30, time_limit: 20}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert "probes: soft_time_limit (30s) must be below time_limit (20s)" in str(info.value)


def test_short_visibility_timeout_reaches_the_broker_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPSQ_VISIBILITY_TIMEOUT", "8")
    monkeypatch.setenv("OPSQ_PROBES__SOFT_TIME_LIMIT", "4")
    monkeypatch.setenv("OPSQ_PROBES__TIME_LIMIT", "6")
    conf = celery_config(load_settings())
    assert conf["broker_transport_options"]["visibility_timeout"] == 8
    assert conf["task_time_limit"] == 6


def test_celery_accepts_json_only() -> None:
    """Pickle in a broker is remote code execution for anyone who can write to Redis."""
    conf = celery_config(load_settings())
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == "json"
    assert conf["result_accept_content"] == ["json"]
    assert conf["beat_scheduler"] == "tasks.beat.LockedRedBeatScheduler"


def test_a_bad_inline_probe_set_fails_at_config_load(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("probes:\n  sets:\n    web:\n      targets: [{name: a, url: 'ftp://x/'}]\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    message = str(info.value)
    assert "field probes.sets.web.targets[0] (name 'a').url:" in message
    assert "must start with http://" in message
