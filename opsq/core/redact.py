"""Secrets never printed: redact credentials in URLs and secret-looking fields.

A URL carries secrets in two places, and both are redacted wherever opsq prints one:

- the user info: ``redis://:PASSWORD@host``, or ``https://TOKEN@host`` where the user
  name is the secret (GitHub, many registries);
- query and fragment parameters whose name says "secret": ``?access_token=``,
  ``&token=``, ``&sig=`` (Azure SAS), ``X-Amz-Signature``/``X-Amz-Credential`` (S3
  pre-signed URLs), ``password=``, ``api_key=``, ``key=``, ``client_secret=``,
  ``#access_token=`` (OAuth implicit flow). See :data:`SECRET_PARAM`.

Used by ``opsq config show``, every log formatter (text and JSON), probe results as
they are read back for output (``opsq probe``, ``opsq runs show``), the task repr that
Celery logs and Flower shows, and ``opsq up``'s banner.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "***"
_SECRET_KEYS = re.compile(r"(pass(word)?|secret|token|api_?key|credential|auth|cookie)", re.I)
"""Config keys (and header names) whose value is a secret; also :data:`SECRET_PARAM`
(``X-Api-Key``, ``Ocp-Apim-Subscription-Key``: a name ending in ``key``)."""
_URL_IN_TEXT = re.compile(r"([a-z][a-z0-9+.-]*://)([^/@\s:]*)(:[^/\s]*)?@", re.I)
"""User info in free text; the password runs to the *last* '@' before the path, as
urlsplit (and redis-py) read ``redis://:p@ss@host``."""

SECRET_PARAM = re.compile(
    # Long words end the name, joined or not: accessToken, client_secret, X-Amz-Signature.
    r"^(?:.*(?:token|secret|password|passwd|signature|apikey|credentials?|session(?:id)?)"
    # Short words only whole or after a separator: key, api_key, sig, pwd, auth (not monkey).
    r"|(?:.*[_.-])?(?:key|sig|pass|pwd|auth|authorization|jwt))$",
    re.I,
)
"""Query/fragment parameter names whose value is a secret."""
_PARAM = re.compile(r"([?&;#])([^=&;#\s]+)=([^&;#\s\"'<>]*)")


def redact_url(url: str) -> str:
    """``redis://:pw@host/0`` -> ``redis://:***@host/0``; ``?token=x`` -> ``?token=***``."""
    if "@" not in url:
        # No user info: only parameters can carry a secret (and without "=" none does).
        # The common case, cheaply: probe results are redacted one by one, 100,000 a run.
        return redact_params(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed netloc or port: redact it as free text
        return redact_text(url)
    if parts.password is None and not (parts.username and "@" in parts.netloc):
        return redact_params(url)
    host = parts.hostname or ""
    if port is not None:
        host = f"{host}:{port}"
    user = parts.username or ""
    netloc = f"{user}:{REDACTED}@{host}" if parts.password is not None else f"{REDACTED}@{host}"
    rebuilt = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return redact_params(rebuilt)


def unencoded_userinfo(url: str) -> bool:
    """Whether *url* seems to hold user info with an unencoded ``/``, ``?`` or ``#``.

    Generated (base64) passwords hold ``/``; written unencoded, it ends urlsplit's host
    early (``redis://:ab/cd@host`` has host "" and path ``/cd@host``), so the password
    is not seen as one."""
    _, sep, rest = url.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    return any(c in userinfo for c in "/?#")


def redact_invalid_url(url: str) -> str:
    """A URL that failed validation, for its error message, with any user info redacted.

    As :func:`redact_url`, but when the user info may hold an unencoded ``/``, ``?`` or
    ``#`` (:func:`unencoded_userinfo`) everything up to the last ``@`` is redacted:
    there, :func:`redact_url` finds no user info and would print the password."""
    if not unencoded_userinfo(url):
        return redact_url(url)
    scheme, _, rest = url.partition("://")
    return redact_params(f"{scheme}://{REDACTED}@{rest.rpartition('@')[2]}")


def redact_params(text: str) -> str:
    """Redact the values of secret-named ``?name=value`` / ``&name=value`` parameters."""
    if "=" not in text:
        return text
    return _PARAM.sub(_redact_param, text)


def _redact_param(match: re.Match[str]) -> str:
    sep, name, value = match.group(1), match.group(2), match.group(3)
    if value and SECRET_PARAM.match(unquote(name)):
        return f"{sep}{name}={REDACTED}"
    return match.group(0)


def redact_text(text: str) -> str:
    """Redact credentials in any URL embedded in free text (log lines, errors)."""
    return redact_params(_URL_IN_TEXT.sub(_redact_match, text))


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
        if key and value and (_SECRET_KEYS.search(key) or SECRET_PARAM.match(key)):
            return REDACTED
        if "://" in value:
            return redact_url(value)
    return value
