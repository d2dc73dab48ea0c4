"""Deliver a :class:`~.message.Message` through one configured notifier.

Synchronous on purpose: a notification is one request, sent from a Celery task on the
``alerts`` queue or from a CLI command, never from the probing event loop.

Every failure is translated here, at the boundary, into the opsq exception tree:
:class:`TemporaryError` (connection refused, timeout, HTTP 5xx and 429, SMTP 4xx) is
retried with backoff by the task; :class:`PermanentError` (other HTTP 4xx, SMTP 5xx,
authentication refused) is not. Messages name the notifier, never its URL: Slack and
webhook URLs carry their secret in the path, where URL redaction cannot see it.
"""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate
from typing import Any

import httpx
import orjson

from opsq.core.config.alerts import (
    AlertmanagerNotifier,
    EmailNotifier,
    NotifierBase,
    SlackNotifier,
    WebhookNotifier,
)
from opsq.core.errors import PermanentError, TemporaryError
from opsq.core.redact import redact_text
from opsq.engines.alerts.message import Message, iso

USER_AGENT = "opsq-alerts/1"
ALERTMANAGER_RESOLVE_FACTOR = 4
"""A firing alert's endsAt is this many resend intervals ahead (Prometheus does the same),
so Alertmanager keeps it active between re-posts and resolves it if opsq goes away."""


@dataclass(frozen=True)
class Delivery:
    """The receiver's answer, for logs and ``opsq alerts test``."""

    notifier: str
    kind: str
    answer: str


def send(
    name: str, notifier: NotifierBase, message: Message, *, now: float | None = None
) -> Delivery:
    """Send *message* through *notifier*; raise TemporaryError or PermanentError."""
    now = time.time() if now is None else now
    senders: dict[type[Any], Callable[[str, Any, Message, float], Delivery]] = {
        WebhookNotifier: _webhook, SlackNotifier: _slack,
        AlertmanagerNotifier: _alertmanager, EmailNotifier: _email,
    }  # fmt: skip
    sender = senders.get(type(notifier))
    if sender is None:
        raise PermanentError(f"notifier {name!r}: unsupported kind {type(notifier).__name__}")
    return sender(name, notifier, message, now)


def _verify(ca_file: str | None) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


def _post(
    name: str, kind: str, url: str, body: bytes, headers: dict[str, str], *,
    timeout: float, verify: ssl.SSLContext | bool = True,
) -> Delivery:  # fmt: skip
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
    try:
        with httpx.Client(timeout=timeout, verify=verify, follow_redirects=False) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.TimeoutException as exc:
        raise TemporaryError(f"notifier {name!r} ({kind}): timeout after {timeout:g}s") from exc
    except httpx.HTTPError as exc:
        reason = redact_text(type(exc).__name__ + ": " + str(exc)).replace(url, "<url>")
        raise TemporaryError(f"notifier {name!r} ({kind}): {reason}") from exc
    return _judge(name, kind, response)


def _judge(name: str, kind: str, response: httpx.Response) -> Delivery:
    answer = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    snippet = response.text[:200].strip()
    if response.status_code < 300:
        return Delivery(name, kind, answer + (f": {snippet}" if snippet else ""))
    problem = f"notifier {name!r} ({kind}): receiver answered {answer}" + (
        f": {snippet}" if snippet else ""
    )
    if response.status_code >= 500 or response.status_code in (408, 429):
        retry_after = response.headers.get("Retry-After", "")
        delay = float(retry_after) if retry_after.isdigit() else None
        raise TemporaryError(problem, delay=delay)
    raise PermanentError(problem)


def webhook_body(message: Message, now: float) -> bytes:
    """The JSON a webhook receives (documented in the README)."""
    return orjson.dumps({
        "version": 1, "key": message.key, "event": message.event,
        "title": message.title, "text": message.text, "severity": message.severity,
        "labels": message.labels, "starts_at": message.starts_at,
        "ends_at": message.ends_at, "sent_at": now, **message.data,
    })  # fmt: skip


def sign(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the raw body (GitHub's webhook convention)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _webhook(name: str, notifier: WebhookNotifier, message: Message, now: float) -> Delivery:
    body = webhook_body(message, now)
    headers = {k: v.get_secret_value() for k, v in notifier.headers.items()}
    headers["Idempotency-Key"] = message.key
    if notifier.secret is not None:
        headers[notifier.signature_header] = sign(notifier.secret.get_secret_value(), body)
    return _post(name, "webhook", notifier.url.get_secret_value(), body, headers,
                 timeout=notifier.timeout, verify=_verify(notifier.ca_file))  # fmt: skip


_SLACK_EMOJI = {
    "firing": ":red_circle:",
    "resolved": ":large_green_circle:",
    "reminder": ":bell:",
    "test": ":wave:",
    "notice": ":information_source:",
}


def _slack(name: str, notifier: SlackNotifier, message: Message, now: float) -> Delivery:
    emoji = _SLACK_EMOJI.get(message.event, "")
    text = f"{emoji} *{message.title}*\n```{message.text}```"
    body = orjson.dumps({"text": text, "mrkdwn": True})
    return _post(name, "slack", notifier.url.get_secret_value(), body,
                 {"Idempotency-Key": message.key}, timeout=notifier.timeout)  # fmt: skip


def alertmanager_alert(
    notifier: AlertmanagerNotifier, message: Message, now: float
) -> dict[str, Any]:
    """One alert of the API v2 ``postableAlerts`` body."""
    labels = {**notifier.labels, "alertname": _alertname(message)}
    for key in ("set", "target"):
        if message.labels.get(key):
            labels[f"opsq_{key}"] = message.labels[key]
    labels["severity"] = (
        "critical"
        if message.labels.get("alert_state") == "down"
        else ("warning" if message.labels.get("alert_state") == "degraded" else "info")
    )
    if message.ends_at is not None:
        ends = message.ends_at
    else:
        ends = now + ALERTMANAGER_RESOLVE_FACTOR * notifier.resend_interval
    return {
        "labels": labels,
        "annotations": {"summary": message.title, "description": message.text,
                        "url": message.labels.get("url", "")},
        "startsAt": iso(message.starts_at if message.starts_at is not None else now),
        "endsAt": iso(ends),
    }  # fmt: skip


def _alertname(message: Message) -> str:
    state = message.labels.get("alert_state", "")
    return {"down": "OpsqTargetDown", "degraded": "OpsqTargetDegraded"}.get(state, "OpsqTest")


def _alertmanager(
    name: str, notifier: AlertmanagerNotifier, message: Message, now: float
) -> Delivery:
    body = orjson.dumps([alertmanager_alert(notifier, message, now)])
    url = notifier.url.rstrip("/") + "/api/v2/alerts"
    return _post(name, "alertmanager", url, body, {}, timeout=notifier.timeout,
                 verify=_verify(notifier.ca_file))  # fmt: skip


def _email(name: str, notifier: EmailNotifier, message: Message, now: float) -> Delivery:
    mail = EmailMessage()
    mail["Subject"] = message.title
    mail["From"] = notifier.sender
    mail["To"] = ", ".join(notifier.to)
    mail["Date"] = formatdate(now)
    domain = notifier.sender.rpartition("@")[2] or "opsq"
    mail["Message-ID"] = f"<{hashlib.sha256(message.key.encode()).hexdigest()[:32]}@{domain}>"
    mail["X-Opsq-Key"] = message.key
    mail.set_content(message.text + "\n")
    try:
        return _smtp_send(name, notifier, mail)
    except smtplib.SMTPAuthenticationError as exc:
        raise PermanentError(f"notifier {name!r} (email): authentication refused: "
                             f"{exc.smtp_code} {_smtp_text(exc.smtp_error)}") from exc  # fmt: skip
    except smtplib.SMTPResponseException as exc:
        problem = f"notifier {name!r} (email): {exc.smtp_code} {_smtp_text(exc.smtp_error)}"
        if 400 <= exc.smtp_code < 500:
            raise TemporaryError(problem) from exc
        raise PermanentError(problem) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise PermanentError(f"notifier {name!r} (email): recipients refused") from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise TemporaryError(f"notifier {name!r} (email): {type(exc).__name__}: {exc}") from exc


def _smtp_text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _smtp_send(name: str, notifier: EmailNotifier, mail: EmailMessage) -> Delivery:
    with smtplib.SMTP(notifier.host, notifier.port, timeout=notifier.timeout) as smtp:
        smtp.ehlo()
        if notifier.starttls:
            if not smtp.has_extn("starttls"):
                raise PermanentError(f"notifier {name!r} (email): the server does not offer "
                                     "STARTTLS (starttls: true)")  # fmt: skip
            smtp.starttls(context=ssl.create_default_context(cafile=notifier.ca_file))
            smtp.ehlo()
        if notifier.username:
            password = notifier.password.get_secret_value() if notifier.password else ""
            smtp.login(notifier.username, password)
        answer = _transaction(smtp, notifier, mail)
    return Delivery(name, "email", f"{len(notifier.to)} recipient(s): {answer}")


def _transaction(smtp: smtplib.SMTP, notifier: EmailNotifier, mail: EmailMessage) -> str:
    """MAIL, RCPT, DATA one by one, so the server's answer to DATA can be reported."""
    code, reply = smtp.mail(notifier.sender)
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, reply, notifier.sender)
    for recipient in notifier.to:
        code, reply = smtp.rcpt(recipient)
        if code not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
    code, reply = smtp.data(mail.as_bytes(policy=SMTP_POLICY))
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)
    return f"{code} {_smtp_text(reply)}"
