"""Effective settings: CLI flags > environment > YAML config file > package defaults.

Built on pydantic-settings. Sources, highest first:

1. keyword overrides (what the CLI parsed from flags),
2. ``OPSQ_*`` environment variables (nested with ``__``: ``OPSQ_PROBES__BATCH_SIZE``),
3. the YAML file named by ``--config`` or ``OPSQ_CONFIG``,
4. the defaults on the model fields: the one place a default is stated (there used
   to be a ``defaults.yaml`` as well, which could drift from them).

Mappings are deep-merged across sources, so a config file may set one field of a
section and inherit the rest. Validation happens at construction; :func:`load_settings`
turns a failure into a :class:`ConfigError` naming the file and field. How to add a
validated setting: :mod:`opsq.core.config`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from opsq.core import keys
from opsq.core.config.alerts import AlertsSettings
from opsq.core.config.base import Invalid, Section, config_dir
from opsq.core.config.cleanup import CleanupSettings
from opsq.core.config.fields import Host, RedisUrl
from opsq.core.config.history import HistorySettings, WebSettings
from opsq.core.config.logs import LogsSettings
from opsq.core.config.probes import ProbeSet
from opsq.core.durations import Duration
from opsq.core.errors import ConfigError
from opsq.core.loading import describe_errors, read_yaml

LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"


class ProbesSettings(Section):
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 100
    concurrency: Annotated[int, Field(ge=1, le=4096)] = 128
    per_host_concurrency: Annotated[int, Field(ge=1, le=4096)] = 64
    per_host_rate: Annotated[float, Field(ge=0)] = 0.0
    per_host_burst: Annotated[int, Field(ge=1)] = 50
    task_rate_limit: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?/[smh]$")
    soft_time_limit: Annotated[Duration, Field(gt=0)] = 300.0
    time_limit: Annotated[Duration, Field(gt=0)] = 360.0
    max_redeliveries: Annotated[int, Field(ge=0, le=100)] = 3
    source_address: str | None = None
    """Local address outgoing probe sockets bind to (a host with several addresses)."""
    sets: dict[str, ProbeSet] = Field(default_factory=dict)

    @field_validator("source_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError as exc:
            raise Invalid(
                f"source_address {value!r} is not an IP address",
                fix="write an address of this host, e.g. 10.0.0.5 (or remove it: the OS chooses)",
            ) from exc

    @model_validator(mode="after")
    def _limits_ordered(self) -> ProbesSettings:
        # The soft limit is the batch's chance to write what it has; it is useless
        # once the hard limit has already killed the process.
        if self.soft_time_limit >= self.time_limit:
            raise ValueError(
                f"soft_time_limit ({self.soft_time_limit:g}s) must be below time_limit "
                f"({self.time_limit:g}s); lower soft_time_limit or raise time_limit"
            )
        return self


class RunRetention(Section):
    """How long a run's results stay in Redis, counted from its creation and again from
    its completion. Redis holds about (targets x bytes per result x retention / interval)
    for a beat set: see the README's run retention section before raising ``beat``."""

    on_demand: Annotated[Duration, Field(ge=300)] = 7 * 86400.0
    """``opsq probe`` runs: a week, to compare and to read the report later."""
    beat: Annotated[Duration, Field(ge=300)] = 86400.0
    """Probe-set runs: a day; they recur every interval, metrics keep the long view."""


class RunsSettings(Section):
    retention: RunRetention = Field(default_factory=RunRetention)


class MetricsSettings(Section):
    port: Annotated[int, Field(ge=0, le=65535)] = 9464
    bind: Host = "127.0.0.1"
    url_labels: bool = False
    """Label probe metrics with the URL (unbounded cardinality: opt in knowingly)."""


class FlowerSettings(Section):
    port: Annotated[int, Field(ge=0, le=65535)] = 5555
    user: str = "opsq"
    password: SecretStr | None = None
    """None: `opsq up` generates one and prints it once."""


class BeatSettings(Section):
    """RedBeat's lock: one beat replica fires entries, a standby takes over on failure."""

    lock_timeout: Annotated[Duration, Field(ge=2)] = float(keys.REDBEAT_LOCK_TIMEOUT_S)
    """A standby beat takes over at most this long after the leader dies."""
    max_loop_interval: Annotated[Duration, Field(gt=0)] = 5.0
    """The leader renews the lock every loop, so this must stay well below lock_timeout."""

    @model_validator(mode="after")
    def _renewed_in_time(self) -> BeatSettings:
        if self.max_loop_interval * 2 > self.lock_timeout:
            raise ValueError(
                f"lock_timeout ({self.lock_timeout}s) must be at least twice max_loop_interval "
                f"({self.max_loop_interval}s), or the leader loses its lock between renewals"
            )
        return self


class Settings(BaseSettings):
    """The whole configuration tree."""

    model_config = SettingsConfigDict(
        env_prefix="OPSQ_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    redis_url: RedisUrl | None = None
    data_dir: Path = Path(".opsq")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    visibility_timeout: Annotated[Duration, Field(gt=0)] = float(keys.VISIBILITY_TIMEOUT_S)
    """Seconds before Redis hands an un-acknowledged task to another worker."""
    probes: ProbesSettings = Field(default_factory=ProbesSettings)
    runs: RunsSettings = Field(default_factory=RunsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    flower: FlowerSettings = Field(default_factory=FlowerSettings)
    beat: BeatSettings = Field(default_factory=BeatSettings)
    cleanup: CleanupSettings = Field(default_factory=CleanupSettings)
    logs: LogsSettings = Field(default_factory=LogsSettings)
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    web: WebSettings = Field(default_factory=WebSettings)

    @model_validator(mode="after")
    def _alert_references(self) -> Settings:
        """Every notifier a set or inline target names exists; windows name real sets."""
        known = self.alerts.notifiers
        for name, probe_set in self.probes.sets.items():
            where = f"probes.sets.{name}"
            check_notifier_refs(probe_set.notify, known, f"{where}.notify")
            if probe_set.targets is not None:
                for index, target in enumerate(probe_set.targets_file().targets):
                    check_notifier_refs(
                        target.notify or (), known, f"{where}.targets[{index}].notify"
                    )
        for index, rule in enumerate(self.cleanup.rules):
            where = f"cleanup.rules[{index}] (name {rule.name!r}).notify"
            check_notifier_refs(rule.notify, known, where)
        for window_name, window in self.alerts.maintenance.items():
            unknown = sorted(set(window.sets or ()) - set(self.probes.sets))
            if unknown:
                raise ValueError(
                    f"alerts.maintenance.{window_name}.sets names unknown probe set(s) "
                    f"{unknown}; known: {sorted(self.probes.sets) or 'none'}"
                )
        return self

    @model_validator(mode="after")
    def _visibility_exceeds_time_limit(self) -> Settings:
        # A batch still running when its message becomes visible again would be
        # delivered twice at once (kombu's Redis transport has no lease renewal).
        if self.visibility_timeout <= self.probes.time_limit:
            raise ValueError(
                f"visibility_timeout ({self.visibility_timeout:g}s) must exceed "
                f"probes.time_limit ({self.probes.time_limit:g}s); raise visibility_timeout "
                "or lower probes.time_limit"
            )
        return self

    @property
    def broker_url(self) -> str:
        """The configured Redis URL, or a local Redis when none is configured."""
        return self.redis_url or LOCAL_REDIS_URL


def check_notifier_refs(names: Iterable[str], known: Mapping[str, object], field: str) -> None:
    """Raise ValueError naming *field* when it refers to a notifier that does not exist."""
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(
            f"{field} names unknown notifier(s) {unknown}; define them under "
            f"alerts.notifiers (known: {sorted(known) or 'none'})"
        )


class _YamlSource(PydanticBaseSettingsSource):
    """A YAML file as a settings source (already validated to be a mapping)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _sourced(file_data: dict[str, Any] | None) -> type[Settings]:
    """Settings read from flags, the environment and *file_data*; None: flags only."""

    class _Sourced(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            if file_data is None:
                return (init_settings,)
            return (init_settings, env_settings, _YamlSource(settings_cls, file_data))

    return _Sourced


def default_settings() -> Settings:
    """The built-in defaults alone: no environment, no file (``opsq config show --defaults``)."""
    return _sourced(None)()


def config_path(explicit: str | Path | None = None) -> Path | None:
    """The config file in effect: ``--config``, else ``OPSQ_CONFIG``, else none."""
    chosen = explicit or os.environ.get("OPSQ_CONFIG")
    return Path(chosen) if chosen else None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the effective settings or raise ConfigError naming file and field."""
    path = config_path(config_file)
    file_data = read_yaml(path) if path is not None else {}

    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        with config_dir(path.parent.absolute() if path is not None else None):
            return _sourced(file_data)(**clean)
    except ValidationError as exc:
        source = str(path) if path else "configuration (environment and defaults)"
        raise ConfigError(describe_errors(exc, source, file_data)) from exc
