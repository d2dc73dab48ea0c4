"""Settings precedence and validation: CLI > env > file > package defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsq.core.errors import ConfigError
from opsq.core.settings import load_settings


def test_package_defaults_apply_without_any_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPSQ_CONFIG", raising=False)
    settings = load_settings()
    assert settings.probes.batch_size == 100
    assert settings.redis_url is None


def test_precedence_cli_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("redis_url: redis://file:1/0\nprobes: {batch_size: 5, concurrency: 9}\n")
    monkeypatch.setenv("OPSQ_PROBES__BATCH_SIZE", "6")
    monkeypatch.setenv("OPSQ_REDIS_URL", "redis://env:1/0")
    settings = load_settings(cfg)
    assert settings.probes.batch_size == 6  # env beats file
    assert settings.probes.concurrency == 9  # file beats defaults, merged per field
    assert settings.redis_url == "redis://env:1/0"
    assert load_settings(cfg, redis_url="redis://cli:1/0").redis_url == "redis://cli:1/0"


def test_config_file_from_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("probes: {batch_size: 11}\n")
    monkeypatch.setenv("OPSQ_CONFIG", str(cfg))
    assert load_settings().probes.batch_size == 11


def test_bad_field_names_file_and_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("probes: {batch_size: -1, bogus: 1}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    message = str(info.value)
    assert str(cfg) in message
    assert "probes.batch_size" in message
    assert "probes.bogus: unknown field" in message
