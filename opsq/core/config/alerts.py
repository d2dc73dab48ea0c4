"""Alerting settings: named notifiers and maintenance windows (the ``alerts:`` section).

Shape::

    alerts:
      notifiers:                      # name -> notifier; sets and targets name them
        ops-slack: {kind: slack, url: https://hooks.slack.com/services/T/B/X}
        am: {kind: alertmanager, url: http://alertmanager:9093}
        hook: {kind: webhook, url: https://example.com/hook, secret: s3cret}
        mail: {kind: email, host: smtp.example.com, username: opsq, password: ...,
               sender: opsq@example.com, to: [oncall@example.com]}
      maintenance:                    # name -> window
        nightly: {cron: "0 2 * * *", duration: 1h, timezone: Europe/Berlin, sets: [web]}
        migration: {start: "2026-03-01T10:00:00+01:00", end: "2026-03-01T12:00:00+01:00"}

Notifiers are a mapping, like ``probes.sets``, so a config file and ``OPSQ_ALERTS__...``
variables merge by name and a reference is simply a key. Secrets (webhook and Slack
URLs, HMAC keys, SMTP passwords) are ``SecretStr``: ``opsq config show``, logs and
``repr`` never print them. Cron expressions and time zones are checked here, at load,
so a typo fails ``opsq config check`` instead of silencing nothing at 3 am.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import Field, SecretStr, field_validator, model_validator

from opsq.core.config.base import Section
from opsq.core.config.fields import ExistingFile, Host, HttpUrl, SecretHttpUrl
from opsq.core.durations import Duration

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
"""Notifier and window names: safe in Redis keys, metric labels and env variable names."""


class NotifierBase(Section):
    """What every notifier kind shares: when to send and how long one send may take."""

    send_on_resolved: bool = True
    """Also notify when a target recovers (a transition to ``up``)."""
    repeat_interval: Annotated[Duration, Field(ge=0)] = 0.0
    """Remind every this long while a target stays down; 0 turns reminders off."""
    timeout: Annotated[Duration, Field(gt=0, le=120)] = 10.0
    """One delivery attempt (connect, send, answer)."""


class WebhookNotifier(NotifierBase):
    """JSON POST; with ``secret``, signed with HMAC-SHA256 over the raw body."""

    kind: Literal["webhook"]
    url: SecretHttpUrl
    secret: SecretStr | None = None
    signature_header: str = "X-Opsq-Signature"
    """Carries ``sha256=<hex digest>`` of the body (GitHub's convention)."""
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    ca_file: ExistingFile | None = None


class SlackNotifier(NotifierBase):
    """Slack incoming webhook (``{"text": ..., "blocks": [...]}``)."""

    kind: Literal["slack"]
    url: SecretHttpUrl


class AlertmanagerNotifier(NotifierBase):
    """Alertmanager API v2: ``POST {url}/api/v2/alerts``.

    While a target is down the alert is re-posted every ``resend_interval`` with
    ``endsAt`` four intervals ahead (what Prometheus does), so Alertmanager keeps it
    active, and would resolve it by itself if opsq stopped; on recovery ``endsAt`` is
    the recovery time. Alertmanager does its own grouping, repeats and resolved
    messages, so ``repeat_interval`` and ``send_on_resolved`` do not apply.
    """

    kind: Literal["alertmanager"]
    url: HttpUrl
    resend_interval: Annotated[Duration, Field(ge=5)] = 60.0
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels on every alert (e.g. ``team: sre``)."""
    ca_file: ExistingFile | None = None


class EmailNotifier(NotifierBase):
    """SMTP with STARTTLS (required unless ``starttls: false``) and AUTH LOGIN/PLAIN."""

    kind: Literal["email"]
    host: Host
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    starttls: bool = True
    username: str | None = None
    password: SecretStr | None = None
    sender: str
    to: Annotated[list[str], Field(min_length=1)]
    ca_file: ExistingFile | None = None

    @model_validator(mode="after")
    def _no_password_in_clear(self) -> EmailNotifier:
        if self.password is not None and not self.starttls:
            raise ValueError(
                "a password with starttls: false would cross the network in clear; "
                "set starttls: true (the server must offer STARTTLS)"
            )
        return self


Notifier = Annotated[
    WebhookNotifier | SlackNotifier | AlertmanagerNotifier | EmailNotifier,
    Field(discriminator="kind"),
]


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA zone (``Europe/Berlin``), or ValueError naming the problem."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin or UTC"
        ) from exc


class MaintenanceWindow(Section):
    """One-off (``start``/``end``) or recurring (``cron`` + ``duration`` + ``timezone``).

    A recurring window opens at each cron match in its time zone and lasts
    ``duration`` of elapsed time. Across daylight-saving changes it follows Debian's
    cron (cronsim): a start in the skipped hour opens when the clock jumps, a start
    in the repeated hour opens once, at its first occurrence.
    """

    start: datetime | None = None
    end: datetime | None = None
    cron: str | None = None
    duration: Annotated[Duration, Field(gt=0, le=31 * 86400)] | None = None
    timezone: str = "UTC"
    sets: list[str] | None = None
    """Probe sets it applies to; none means every set."""
    targets: list[str] | None = None
    """Target names it applies to; none means every target of those sets."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        parse_timezone(value)
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                CronSim(value, datetime(2000, 1, 1, tzinfo=UTC))
            except CronSimError as exc:
                raise ValueError(
                    f"invalid cron expression {value!r}: {exc} (five fields: minute hour "
                    "day-of-month month day-of-week, e.g. '0 2 * * SUN')"
                ) from exc
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> MaintenanceWindow:
        if self.cron is not None:
            if self.duration is None or self.start is not None or self.end is not None:
                raise ValueError("a recurring window needs cron and duration (no start/end)")
        elif self.start is None or self.end is None:
            raise ValueError("a window needs start and end (one-off) or cron and duration")
        elif self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError(
                "start and end need a UTC offset (2026-03-01T10:00:00+01:00) or Z; "
                "a bare local time is ambiguous"
            )
        elif self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class AlertsSettings(Section):
    """Notifiers, maintenance windows and how notification tasks retry."""

    notifiers: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Notifier] = Field(
        default_factory=dict
    )
    maintenance: dict[Annotated[str, Field(pattern=NAME_PATTERN)], MaintenanceWindow] = Field(
        default_factory=dict
    )
    max_retries: Annotated[int, Field(ge=0, le=100)] = 12
    """Delivery attempts beyond the first; then the notification is dropped (counted)."""
    retry_backoff_base: Annotated[Duration, Field(gt=0)] = 2.0
    retry_backoff_cap: Annotated[Duration, Field(gt=0)] = 300.0
    """Full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""
    tick_interval: Annotated[Duration, Field(ge=1, le=300)] = 15.0
    """How often beat runs ``opsq.alerts_tick``: reminders, Alertmanager re-posts, runs
    past their deadline, and notifications a crashed worker left in its outbox."""
    transition_retention: Annotated[Duration, Field(ge=3600)] = 90 * 86400.0
    """Transitions are kept this long in the per-set stream (trimmed by time)."""
