"""Each notifier kind against a real local receiver: webhook (HMAC), Slack, SMTP STARTTLS."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsq.core.config.alerts import AlertsSettings
from opsq.core.errors import ConfigError, PermanentError, TemporaryError
from opsq.engines.alerts import send_via, trial_message
from opsq.engines.alerts.message import transition_message
from tests.support.receivers import HttpReceiver, SmtpReceiver

NOW = 1_800_000_000.0
TRANSITION = {"id": "abc", "set": "web", "target": "api|http://api/", "name": "api",
              "url": "http://api/", "from_state": "up", "to_state": "down", "at": NOW,
              "reason": "timeout", "detail": "timeout after 5s", "run_id": "r1",
              "locations": {"eu": {"verdict": "down", "reason": "timeout"}}}  # fmt: skip


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver().start()
    yield server
    server.stop()


def alerts(**notifiers: dict) -> AlertsSettings:
    return AlertsSettings.model_validate({"notifiers": notifiers})


def test_webhook_posts_json_signed_with_hmac_sha256(receiver: HttpReceiver) -> None:
    """The body is the documented JSON, the signature header is HMAC-SHA256 of the raw body
    under the configured secret, and the idempotency key travels in a header."""
    config = alerts(hook={"kind": "webhook", "url": f"{receiver.url}/hook", "secret": "k3y"})
    message = transition_message(TRANSITION, "abc:hook:firing", "firing", now=NOW)
    delivery = send_via(config, "hook", message, now=NOW)
    assert delivery.answer.startswith("HTTP 200")
    (got,) = receiver.accepted
    expected = "sha256=" + hmac.new(b"k3y", got.body, hashlib.sha256).hexdigest()
    assert got.headers["x-opsq-signature"] == expected
    assert got.key == "abc:hook:firing"
    body = got.json
    assert body["event"] == "firing"
    assert body["labels"]["target"] == "api"
    assert body["transition"]["to_state"] == "down"
    assert body["transition"]["locations"]["eu"]["verdict"] == "down"


def test_slack_gets_the_incoming_webhook_format(receiver: HttpReceiver) -> None:
    """Slack receives {"text": ...} naming the target, the state and the reason."""
    config = alerts(slack={"kind": "slack", "url": f"{receiver.url}/services/T/B/X"})
    send_via(config, "slack", transition_message(TRANSITION, "k", "firing", now=NOW))
    (got,) = receiver.accepted
    assert got.path == "/services/T/B/X"
    assert set(got.json) == {"text", "mrkdwn"}
    assert "[DOWN] web/api (timeout)" in got.json["text"]


def test_receiver_errors_are_temporary_or_permanent(receiver: HttpReceiver) -> None:
    """503 and 429 are retried (TemporaryError), 400 is not (PermanentError); neither
    message shows the URL, whose path is the secret of a Slack webhook."""
    config = alerts(slack={"kind": "slack", "url": f"{receiver.url}/services/SECRET"})
    receiver.status = 503
    with pytest.raises(TemporaryError) as temporary:
        send_via(config, "slack", trial_message("slack", NOW))
    receiver.status = 400
    with pytest.raises(PermanentError) as permanent:
        send_via(config, "slack", trial_message("slack", NOW))
    for exc in (temporary.value, permanent.value):
        assert "SECRET" not in str(exc)
        assert "'slack'" in str(exc)


def test_unreachable_receiver_is_temporary_and_unknown_notifier_is_config() -> None:
    """A refused connection is worth retrying; an undefined notifier is a config error."""
    config = alerts(hook={"kind": "webhook", "url": "http://127.0.0.1:9/x?token=SECRET"})
    with pytest.raises(TemporaryError) as exc:
        send_via(config, "hook", trial_message("hook", NOW))
    assert "SECRET" not in str(exc.value)
    with pytest.raises(ConfigError, match="'nope' is not defined"):
        send_via(config, "nope", trial_message("nope", NOW))


def test_email_over_starttls_with_auth(tmp_path: Path) -> None:
    """aiosmtpd requires STARTTLS before AUTH; the message arrives with our subject, our
    Message-ID derived from the key, and the server's answer to DATA is reported."""
    smtp = SmtpReceiver().start()
    try:
        config = alerts(mail={
            "kind": "email", "host": "127.0.0.1", "port": smtp.port, "username": "opsq",
            "password": "s3cret-pw", "sender": "opsq@example.com",
            "to": ["oncall@example.com", "sre@example.com"], "ca_file": smtp.ca_file(tmp_path),
        })  # fmt: skip
        delivery = send_via(config, "mail", transition_message(TRANSITION, "k1", "firing",
                                                                now=NOW))  # fmt: skip
        assert "250 Message accepted for delivery" in delivery.answer
        (mail,) = smtp.messages
        assert mail["Subject"] == "[DOWN] web/api (timeout)"
        assert mail["To"] == "oncall@example.com, sre@example.com"
        assert mail["X-Opsq-Key"] == "k1"
        assert "reason: timeout: timeout after 5s" in mail.get_payload()
        assert smtp.logins == ["opsq"]
    finally:
        smtp.stop()


def test_email_with_a_wrong_password_is_permanent(tmp_path: Path) -> None:
    """An authentication refusal is a config problem: not retried, and no password shown."""
    smtp = SmtpReceiver().start()
    try:
        config = alerts(mail={
            "kind": "email", "host": "127.0.0.1", "port": smtp.port, "username": "opsq",
            "password": "WRONG-pw", "sender": "opsq@example.com", "to": ["a@example.com"],
            "ca_file": smtp.ca_file(tmp_path),
        })  # fmt: skip
        with pytest.raises(PermanentError, match="authentication refused") as exc:
            send_via(config, "mail", trial_message("mail", NOW))
        assert "WRONG-pw" not in str(exc.value)
        assert smtp.messages == []
    finally:
        smtp.stop()


def test_a_token_in_the_target_url_never_reaches_a_receiver(receiver: HttpReceiver) -> None:
    """Target URL and error detail are redacted in the text, the labels and the JSON body."""
    config = alerts(hook={"kind": "webhook", "url": f"{receiver.url}/hook"})
    secret_url = "https://api.example.com/health?access_token=tok-17"
    transition = {**TRANSITION, "url": secret_url, "detail": f"401 for url '{secret_url}'"}
    send_via(config, "hook", transition_message(transition, "k", "firing", now=NOW), now=NOW)
    (got,) = receiver.accepted
    assert "tok-17" not in got.body.decode()
    assert got.json["labels"]["url"] == "https://api.example.com/health?access_token=***"
