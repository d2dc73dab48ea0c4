"""Defaults are stated once, on the settings models.

There used to be three places: ``opsq/core/defaults.yaml`` (loaded under the config
file, so it silently won over a model's default), the pydantic models, and engine
constructors. The YAML file is gone; the constructors that still take a default must
agree with the model (they default to ``default_of(Model, "field")``), and this test lists them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from opsq.cli.main import main
from opsq.core.config.cleanup import CleanupSettings
from opsq.core.settings import MetricsSettings, ProbesSettings, default_settings, load_settings
from opsq.engines.cleanup.informer import Informer
from opsq.engines.cleanup.kube import Kube
from opsq.engines.probe.engine import ProbeEngine

# (callable, parameter, model, field): a constructor default that repeats a setting.
CONSTRUCTOR_DEFAULTS: list[tuple[Callable[..., Any], str, type[BaseModel], str]] = [
    (ProbeEngine, "concurrency", ProbesSettings, "concurrency"),
    (ProbeEngine, "per_host_concurrency", ProbesSettings, "per_host_concurrency"),
    (ProbeEngine, "url_labels", MetricsSettings, "url_labels"),
    (ProbeEngine, "source_address", ProbesSettings, "source_address"),
    (Informer, "page_size", CleanupSettings, "page_size"),
    (Informer, "watch_timeout", CleanupSettings, "watch_timeout"),
    (Informer, "resync", CleanupSettings, "resync"),
    (Kube, "request_timeout", CleanupSettings, "request_timeout"),
]


@pytest.fixture
def batch_size_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """ProbesSettings.batch_size's default changed to 77 for one test, then restored."""
    monkeypatch.delenv("OPSQ_CONFIG", raising=False)
    monkeypatch.delenv("OPSQ_PROBES__BATCH_SIZE", raising=False)
    field = ProbesSettings.model_fields["batch_size"]
    original = field.default
    field.default = 77
    ProbesSettings.model_rebuild(force=True)
    try:
        yield
    finally:
        field.default = original
        ProbesSettings.model_rebuild(force=True)


@pytest.mark.usefixtures("batch_size_default")
def test_the_model_default_is_the_effective_default() -> None:
    """Change a default on the model and it is the default: no file overrides it (before,
    defaults.yaml said 100 and won)."""
    assert load_settings().probes.batch_size == 77
    assert default_settings().probes.batch_size == 77


@pytest.mark.parametrize(
    ("func", "param", "model", "field"),
    CONSTRUCTOR_DEFAULTS,
    ids=[f"{f.__name__}.{p}" for f, p, _, _ in CONSTRUCTOR_DEFAULTS],
)
def test_constructor_defaults_agree_with_the_models(
    func: Callable[..., Any], param: str, model: type[BaseModel], field: str
) -> None:
    """An engine built without settings (tests, benchmarks, --local) behaves as configured."""
    default = inspect.signature(func).parameters[param].default
    assert default == model.model_fields[field].default


def test_config_show_defaults_ignores_environment_and_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`opsq config show --defaults` prints the models' defaults: the reference that
    defaults.yaml used to be."""
    monkeypatch.setenv("OPSQ_PROBES__BATCH_SIZE", "7")
    main(["config", "show", "--defaults", "--output", "json"])
    out = capsys.readouterr().out
    assert '"batch_size": 100' in out
    main(["config", "show", "--output", "json"])
    assert '"batch_size": 7' in capsys.readouterr().out
