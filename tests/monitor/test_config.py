"""Monitoring config errors exit 2 from `opsq config check`, naming the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.pipeline.conftest import run_cli

BASE = {
    "alerts": {
        "notifiers": {"hook": {"kind": "webhook", "url": "http://127.0.0.1:1/h"}},
        "maintenance": {"nightly": {"cron": "0 2 * * *", "duration": "1h",
                                    "timezone": "Europe/Berlin"}},
    },
    "probes": {"sets": {"web": {"targets": [{"name": "a", "url": "http://127.0.0.1:1/"}],
                                "locations": ["eu", "us", "ap"], "quorum": 2,
                                "notify": ["hook"]}}},
}  # fmt: skip


def check(
    tmp_path: Path, config: dict, redis_url: str = "redis://127.0.0.1:1/0"
) -> tuple[int, str]:
    path = tmp_path / "opsq.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run_cli(["config", "check", "--config", str(path)], redis_url)
    return done.returncode, done.stderr + done.stdout


def with_change(path: tuple[str, ...], value: object) -> dict:
    config = yaml.safe_load(yaml.safe_dump(BASE))
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return config


def test_the_full_example_is_valid(tmp_path: Path) -> None:
    """Three locations, quorum 2, a notifier and a Berlin cron window pass the check."""
    assert check(tmp_path, BASE) == (0, "configuration OK\n")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("probes", "sets", "web", "notify"), ["pager"],
         "probes.sets.web.notify names unknown notifier(s) ['pager']"),
        (("probes", "sets", "web", "targets"),
         [{"name": "a", "url": "http://x/", "notify": ["nope"]}],
         "probes.sets.web.targets[0].notify names unknown notifier(s) ['nope']"),
        (("alerts", "maintenance", "nightly", "cron"), "0 2 * *",
         "alerts.maintenance.nightly.cron: invalid cron expression '0 2 * *'"),
        (("alerts", "maintenance", "nightly", "timezone"), "Europe/Berln",
         "alerts.maintenance.nightly.timezone: unknown time zone 'Europe/Berln'"),
        (("probes", "sets", "web", "quorum"), 4,
         "quorum 4 is more than the 3 location(s); lower quorum or add locations"),
        (("alerts", "maintenance", "nightly", "sets"), ["webb"],
         "alerts.maintenance.nightly.sets names unknown probe set(s) ['webb']"),
        (("probes", "sets", "web", "locations"), [],
         "field probes.sets.web: locations is empty: list the locations to probe from, or "
         "leave locations out"),
        (("probes", "sets", "web", "history"), "sometimes",
         "field probes.sets.web.history: Input should be a valid boolean"),
    ],
    ids=["unknown-notifier", "unknown-target-notifier", "bad-cron", "unknown-tz",
         "quorum-over-locations", "window-unknown-set", "no-locations", "history-not-bool"],
)  # fmt: skip
def test_bad_monitoring_config_exits_2_naming_the_field(
    tmp_path: Path, path: tuple[str, ...], value: object, expected: str
) -> None:
    """Each mistake is caught at load, before any worker or beat would act on it."""
    code, output = check(tmp_path, with_change(path, value))
    assert code == 2, output
    assert expected in output
    assert "Traceback" not in output


def test_secrets_of_notifiers_are_redacted_in_config_show(tmp_path: Path) -> None:
    """Webhook URLs, HMAC keys and SMTP passwords never appear in `opsq config show`."""
    config = with_change(("alerts", "notifiers"), {
        "hook": {"kind": "webhook", "url": "https://hooks.example.com/T0/SECRETPATH",
                 "secret": "HMACKEY"},
        "mail": {"kind": "email", "host": "smtp.example.com", "username": "u",
                 "password": "SMTPPASS", "sender": "a@example.com", "to": ["b@example.com"]},
    })  # fmt: skip
    path = tmp_path / "opsq.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run_cli(["config", "show", "--config", str(path), "--output", "json"],
                   "redis://127.0.0.1:1/0")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for secret in ("SECRETPATH", "HMACKEY", "SMTPPASS"):
        assert secret not in done.stdout
