"""History and status page settings (the ``history:`` and ``web:`` sections).

Shape::

    history:
      enabled: true          # record raw verdicts, rollups and incidents of set runs
      raw_retention: 48h     # raw verdicts per (set, target)
      retention: 90d         # hourly/daily rollups and incidents
    web:                     # `opsq web`: the status page and /api/v1/
      bind: 127.0.0.1
      port: 8080
      public: false          # true: read-only page and API without a password
      user: opsq
      password: null         # required unless public (`opsq up` generates one)
      cache_ttl: 5s
      title: opsq status

The defaults live here and only here.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, model_validator

from opsq.core.config.base import Section
from opsq.core.config.fields import Host
from opsq.core.durations import Duration


class HistorySettings(Section):
    enabled: bool = True
    raw_retention: Annotated[Duration, Field(ge=3600, le=3 * 366 * 86400)] = 48 * 3600.0
    """Raw verdicts per (set, target); ~30 bytes per verdict (see the README)."""
    retention: Annotated[Duration, Field(ge=86400, le=3 * 366 * 86400)] = 90 * 86400.0
    """Hourly and daily rollups and incidents."""

    @model_validator(mode="after")
    def _raw_within_rollups(self) -> HistorySettings:
        if self.raw_retention > self.retention:
            raise ValueError(
                f"raw_retention ({self.raw_retention:g}s) must not exceed retention "
                f"({self.retention:g}s); lower history.raw_retention"
            )
        return self


class WebSettings(Section):
    bind: Host = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    public: bool = False
    """Serve the page, the API and badges without a password (read-only, redacted)."""
    user: str = "opsq"
    password: SecretStr | None = None
    """Required unless ``public``; `opsq up` generates one and prints it once."""
    cache_ttl: Annotated[Duration, Field(ge=0, le=300)] = 5.0
    """Rendered pages and API answers are reused this long."""
    title: Annotated[str, Field(min_length=1, max_length=80)] = "opsq status"
