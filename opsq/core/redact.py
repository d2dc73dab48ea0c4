"""Secrets never printed: redact passwords in URLs and secret-looking fields.

Used by `opsq config show`, the JSON log formatter and `opsq up`'s banner.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"
_SECRET_KEYS = re.compile(r"(pass(word)?|secret|token|api_?key|credential|auth)", re.I)
_URL_IN_TEXT = re.compile(r"([a-z][a-z0-9+.-]*://)([^/@\s:]*)(:[^/@\s]*)?@", re.I)


def redact_url(url: str) -> str:
    """``redis://:pw@host:6379/0`` -> ``redis://:***@host:6379/0``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is None and not (parts.username and "@" in parts.netloc):
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    netloc = f"{user}:{REDACTED}@{host}" if parts.password is not None else f"{REDACTED}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """Redact credentials in any URL embedded in free text (log lines, errors)."""
    return _URL_IN_TEXT.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    """As :func:`redact_url`: keep a user beside a password; a lone user is the secret.

    ``https://ghp_token@host`` carries its token as the user name (GitHub, many
    registries), so without a password the whole userinfo goes.
    """
    scheme, user, password = match.group(1), match.group(2), match.group(3)
    if password is None:
        return f"{scheme}{REDACTED}@"
    return f"{scheme}{user}:{REDACTED}@"


def redact(value: Any, key: str = "") -> Any:
    """Recursively redact a config tree: secret-named keys and URL passwords."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if key and _SECRET_KEYS.search(key) and value:
            return REDACTED
        if "://" in value:
            return redact_url(value)
    return value
