"""`opsq config check` catches, at load time, every config that would fail at run time.

Each case of issue 9 ("Why" #4) and issue 8 §4 (multiline regex) exits 2 with a message
naming the file, the field and the fix. Before, each of these passed the check and
failed later: `opsq runs list` with a traceback, beat with OverflowError, every probe
"over max_latency nans", the agent at start.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from opsq.cli.main import main
from opsq.core.settings import load_settings

TARGET = '{name: api, url: "http://127.0.0.1:8080/"}'


def _check(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(["config", "check", "--config", str(config)])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out + err


def _refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml: str, field: str, fix: str
) -> str:
    config = tmp_path / "opsq.yaml"
    config.write_text(yaml)
    code, output = _check(config, capsys)
    assert code == 2, output
    assert str(config) in output
    assert f"field {field}:" in output
    assert f"(fix: {fix}" in output
    assert "Traceback" not in output
    return output


def test_redis_url_that_is_not_a_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`redis_url: "not a url"` passed, then `opsq runs list` died with a traceback."""
    out = _refused(tmp_path, capsys, 'redis_url: "not a url"\n', "redis_url", "write redis://")
    assert "is not a redis:// or rediss:// URL" in out


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://127.0.0.1:port/0", "invalid port"),
        ("redis://127.0.0.1:6379/zero", "database 'zero' is not a number"),
        ("redis:///0", "has no host"),
        ("unix:///tmp/redis.sock", "not a redis:// or rediss://"),  # Celery's broker refuses it
    ],
)
def test_redis_urls_that_redis_py_or_celery_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, problem: str
) -> None:
    """Each fails at connect time in redis-py or kombu; the check says so first."""
    out = _refused(tmp_path, capsys, f'redis_url: "{url}"\n', "redis_url", "write redis://")
    assert problem in out


def test_redis_url_password_is_not_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The message quotes the bad URL, redacted."""
    out = _refused(
        tmp_path, capsys, 'redis_url: "redis://:s3cret@host:port/0"\n', "redis_url", "write"
    )
    assert "s3cret" not in out


@pytest.mark.parametrize(
    ("field", "yaml"),
    [
        ("redis_url", 'redis_url: "redis://:ab/cd+ef==@127.0.0.1:6379/0"\n'),
        ("redis_url", 'redis_url: "redis://default:Zx9/Kq@127.0.0.1:1/0"\n'),
        (
            "logs.shipper.sink.url",
            'logs: {shipper: {sink: {type: loki, url: "https://u:Zx9/Kq@loki:3100"}}}\n',
        ),
    ],
)
def test_a_password_with_a_slash_is_not_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, yaml: str
) -> None:
    """A generated (base64) password holds '/': urlsplit ends the host there and finds no
    user info, so the whole password was printed in the error (hostile check 89 F1)."""
    out = _refused(tmp_path, capsys, yaml, field, "percent-encode")
    assert "ab/cd" not in out
    assert "Zx9" not in out
    assert "***@" in out


def test_interval_inf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`interval: .inf` passed, then beat logged OverflowError and never ran the set."""
    yaml = f"probes: {{sets: {{web: {{targets: [{TARGET}], interval: .inf}}}}}}\n"
    out = _refused(tmp_path, capsys, yaml, "probes.sets.web.interval", "write a number")
    assert "inf is not a finite duration" in out


def test_max_latency_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`max_latency: nan` passed, and the target was always down ("over max_latency nans")."""
    target = '{name: api, url: "http://127.0.0.1:8080/", expect: {max_latency: .nan}}'
    yaml = f"probes: {{sets: {{web: {{targets: [{target}]}}}}}}\n"
    field = "probes.sets.web.targets[0] (name 'api').expect.max_latency"
    out = _refused(tmp_path, capsys, yaml, field, "write a number")
    assert "nan is not a finite duration" in out


def test_max_latency_nan_in_a_targets_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same rule in a targets file given to `opsq probe` (nothing is enqueued)."""
    targets = tmp_path / "targets.yaml"
    targets.write_text(f"targets:\n  - {TARGET[:-1]}, expect: {{max_latency: nan}}}}\n")
    with pytest.raises(SystemExit) as info:
        main(["probe", str(targets), "--redis-url", "redis://127.0.0.1:1/0"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "expect.max_latency: 'nan' is not a finite duration (fix:" in err


def test_probe_set_file_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A set whose `file:` does not exist passed; the path is shown resolved."""
    yaml = "probes: {sets: {web: {file: missing-targets.yaml, interval: 30s}}}\n"
    out = _refused(tmp_path, capsys, yaml, "probes.sets.web.file", "create it")
    assert f"{tmp_path / 'missing-targets.yaml'}' does not exist" in out


@pytest.mark.parametrize("value", ["-5s", "-30", -2.5])
def test_negative_duration_gets_a_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: object
) -> None:
    """A negative duration was reported as a format error with no fix."""
    yaml = f"probes: {{soft_time_limit: {value}}}\n"
    out = _refused(tmp_path, capsys, yaml, "probes.soft_time_limit", "drop the minus sign")
    assert "a duration cannot be negative" in out


def test_bad_multiline_regex(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 8 §4: a bad logs.agent.multiline pattern was only caught when the agent started."""
    yaml = 'logs: {agent: {multiline: {start_pattern: "^(\\\\d+"}}}\n'
    field = "logs.agent.multiline.start_pattern"
    out = _refused(tmp_path, capsys, yaml, field, "correct the pattern")
    assert "is not a valid regular expression" in out


def test_multiline_regex_valid_for_text_but_not_for_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent matches raw bytes, where a \\u escape is an error: checked the same way."""
    yaml = 'logs: {agent: {multiline: {start_pattern: "^\\\\u00e9"}}}\n'
    field = "logs.agent.multiline.start_pattern"
    out = _refused(tmp_path, capsys, yaml, field, "write non-ASCII characters literally")
    assert "not valid on raw log bytes" in out


def test_bad_body_regex(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every regex compiles at load, including those of inline probe-set targets."""
    target = '{name: api, url: "http://h/", expect: {body_regex: "ok("}}'
    yaml = f"probes: {{sets: {{web: {{targets: [{target}]}}}}}}\n"
    field = "probes.sets.web.targets[0] (name 'api').expect.body_regex"
    _refused(tmp_path, capsys, yaml, field, "correct the pattern")


@pytest.mark.parametrize("url", ["not a url", "loki:3100", "http://:3100", "http://h:port"])
def test_sink_url_that_does_not_parse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """A sink URL that httpx could not use fails the check, not the shipper's first POST."""
    yaml = f'logs: {{shipper: {{sink: {{type: loki, url: "{url}"}}}}}}\n'
    _refused(tmp_path, capsys, yaml, "logs.shipper.sink.url", "write http://")


@pytest.mark.parametrize(
    ("yaml", "field", "fix"),
    [
        ("probes: {per_host_rate: .inf}\n", "probes.per_host_rate", "use a finite number"),
        ("visibility_timeout: 0\n", "visibility_timeout", "use a value above 0"),
        ("metrics: {bind: 'not an address'}\n", "metrics.bind", "write an address"),
        ("log_format: xml\n", "log_format", "use one of"),
    ],
)
def test_other_values_that_fail_later(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml: str, field: str, fix: str
) -> None:
    """Infinite rates, out-of-range numbers, unbindable addresses: each with its fix."""
    _refused(tmp_path, capsys, yaml, field, fix)


def test_good_config_passes_and_set_files_resolve_from_the_config_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative `file:` is relative to the config file, whatever the working directory,
    and is stored absolute so beat and workers read the same file."""
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "web.yaml").write_text(f"targets: [{TARGET}]\n")
    config = conf_dir / "opsq.yaml"
    config.write_text(
        'redis_url: "rediss://:pw@redis.example:6380/2"\n'
        "probes: {sets: {web: {file: web.yaml, interval: 30s}}}\n"
        'logs: {agent: {multiline: {start_pattern: "^\\\\d{4}-"}}}\n'
    )
    monkeypatch.chdir(tmp_path)
    code, output = _check(config, capsys)
    assert (code, output.strip()) == (0, "configuration OK")
    assert load_settings(config).probes.sets["web"].file == str(conf_dir / "web.yaml")


def test_exit_code_2_from_a_real_process(tmp_path: Path) -> None:
    """The installed console script, not only main(): exit 2 and the message on stderr."""
    config = tmp_path / "opsq.yaml"
    config.write_text("probes: {sets: {web: {file: nope.yaml}}}\n")
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("opsq")), "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "field probes.sets.web.file" in proc.stderr


def test_notifier_urls_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Alert notifiers follow the same pattern: a Slack URL that does not parse is refused
    without echoing it (it holds a token); a missing CA file is named."""
    yaml = (
        "alerts: {notifiers: {\n"
        '  chat: {kind: slack, url: "hooks.slack.com/services/T0/B0/tok-16"},\n'
        '  am: {kind: alertmanager, url: "http://am:9093", ca_file: no-such-ca.pem}}}\n'
    )
    out = _refused(tmp_path, capsys, yaml, "alerts.notifiers.chat.slack.url", "paste the whole")
    assert "tok-16" not in out
    assert "field alerts.notifiers.am.alertmanager.ca_file:" in out
    assert "no-such-ca.pem' does not exist" in out
