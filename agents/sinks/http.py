"""The HTTP plumbing the Loki and Elasticsearch sinks share.

One ``httpx.Client`` per sink (keep-alive across batches). Status codes become retry
decisions where they enter: 2xx is a confirmed write; 408, 429 and 5xx (and any
transport error or timeout) are :class:`TemporaryError`, honouring ``Retry-After``; any
other status is :class:`PermanentError`, which makes the shipper bisect the batch to
find the entry the server refuses and dead-letter only that one.
"""

from __future__ import annotations

import httpx

from opsq.core.config.logs import SinkSettings
from opsq.core.errors import ConfigError, PermanentError, TemporaryError
from opsq.core.redact import redact_text

# 408: the server or a proxy gave up waiting for the body (a slow upload), and 429: too
# many requests. Both say "later", not "never": as PermanentError they would be bisected
# down to single entries and dead-lettered.
_RETRY_LATER = (408, 429)


def make_client(settings: SinkSettings, headers: dict[str, str]) -> httpx.Client:
    if not settings.url:
        raise ConfigError(
            f"logs.shipper.sink.url: the {settings.type} sink needs a url "
            "(e.g. http://127.0.0.1:3100); set logs.shipper.sink.url"
        )
    auth = None
    if settings.username is not None:
        password = settings.password.get_secret_value() if settings.password else ""
        auth = httpx.BasicAuth(settings.username, password)
    return httpx.Client(
        base_url=settings.url.rstrip("/"), timeout=settings.timeout, auth=auth, headers=headers
    )


def post(client: httpx.Client, path: str, body: bytes, content_type: str) -> httpx.Response:
    """POST and classify the answer; returns only 2xx responses."""
    try:
        response = client.post(path, content=body, headers={"Content-Type": content_type})
    except httpx.HTTPError as exc:
        raise TemporaryError(redact_text(f"POST {path}: {exc}")) from exc
    status = response.status_code
    if 200 <= status < 300:
        return response
    detail = f"POST {path}: HTTP {status}: {response.text[:300]}"
    if status in _RETRY_LATER or status >= 500:
        raise TemporaryError(detail, delay=_retry_after(response))
    raise PermanentError(detail)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None
