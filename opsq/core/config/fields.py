"""Field types that fail at load time for anything that would fail at run time.

Use these instead of ``str``/``Path`` for a value opsq will later compile, connect to
or open; ``opsq config check`` then catches the mistake, with the fix, instead of a
worker, beat or the agent finding it hours later:

- :data:`Regex` compiles as a Python regex; :data:`BytesRegex` also as a bytes pattern
  (the log agent matches raw bytes, where ``\\u00e9`` is not a valid escape);
- :data:`RedisUrl` parses the way both redis-py and Celery's broker (kombu) will use it;
- :data:`HttpUrl` is an ``http(s)://host[:port]`` URL (sinks, webhooks);
  :data:`SecretHttpUrl` the same for a URL that is itself a secret (Slack, webhooks);
- :data:`Host` is an IP address or a DNS name (what a server binds to);
- :data:`ExistingFile` (a ``str``) names a file that exists, relative to the config
  file's directory; it is stored resolved (absolute), so every process reads that file.

Each raises :class:`~opsq.core.config.base.Invalid` with a fix.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, SecretStr

from opsq.core.config.base import Invalid, resolve_path
from opsq.core.redact import redact_invalid_url, unencoded_userinfo

REDIS_URL_EXAMPLE = "redis://[:PASSWORD@]HOST:6379/0 (rediss:// for TLS)"


_REGEX_FIX = "correct the pattern (Python re syntax; quote it in YAML, e.g. '^\\d+')"
_BYTES_FIX = "write non-ASCII characters literally instead of \\u/\\N escapes"


def check_regex(pattern: str) -> str:
    _compiles(pattern, "is not a valid regular expression", _REGEX_FIX)
    return pattern


def check_bytes_regex(pattern: str) -> str:
    check_regex(pattern)
    _compiles(pattern.encode(), "is not valid on raw log bytes", _BYTES_FIX)
    return pattern


def _compiles(pattern: str | bytes, problem: str, fix: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        shown = pattern.decode() if isinstance(pattern, bytes) else pattern
        raise Invalid(f"{shown!r} {problem}: {exc}", fix=fix) from exc


def check_redis_url(url: str) -> str:
    """As redis-py (``Redis.from_url``) and kombu (the Celery broker) both accept it."""
    fix = _url_fix(url, f"write {REDIS_URL_EXAMPLE}")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("redis", "rediss"):
        raise Invalid(f"{shown_url(url)} is not a redis:// or rediss:// URL", fix=fix)
    if not parts.hostname:
        raise Invalid(f"{shown_url(url)} has no host", fix=fix)
    _check_port(url, fix)
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise Invalid(f"{shown_url(url)}: the database {db!r} is not a number", fix=fix)
    return url.strip()


def check_http_url(url: str) -> str:
    fix = _url_fix(url, "write http://HOST:PORT or https://HOST[:PORT][/PATH]")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"{shown_url(url)} is not an http:// or https:// URL with a host", fix=fix)
    _check_port(url, fix)
    return url.strip()


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def check_host(host: str) -> str:
    """An address to bind or connect to: an IP address or a DNS name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise Invalid(
                f"{host!r} is neither an IP address nor a host name",
                fix="write an address such as 127.0.0.1, 0.0.0.0 (all interfaces), :: or localhost",
            ) from None
    return host


def check_secret_http_url(url: SecretStr) -> SecretStr:
    """As :func:`check_http_url`, without echoing the URL (Slack's carries its token)."""
    parts = urlsplit(url.get_secret_value().strip())
    try:
        parts.port  # noqa: B018 -- the property parses and range-checks it
    except ValueError:
        parts = parts._replace(scheme="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(
            "is not an http:// or https:// URL with a host (not shown: it holds a secret)",
            fix="paste the whole URL, e.g. https://hooks.slack.com/services/T000/B000/XXXX",
        )
    return url


def check_existing_file(path: str) -> str:
    resolved = resolve_path(Path(path))
    if not resolved.is_file():
        what = "is a directory" if resolved.is_dir() else "does not exist"
        raise Invalid(
            f"file {str(resolved)!r} {what}",
            fix="create it, or correct the path (a relative path is relative to the "
            "config file's directory)",
        )
    return str(resolved)


def _check_port(url: str, fix: str) -> None:
    try:
        urlsplit(url.strip()).port  # noqa: B018 -- the property parses and range-checks it
    except ValueError as exc:
        raise Invalid(f"{shown_url(url)} has an invalid port", fix=fix) from exc


def _url_fix(url: str, fix: str) -> str:
    """*fix*, or how to write a password holding '/', '?' or '#' when that is the trouble."""
    if unencoded_userinfo(url):
        return "percent-encode the password's '/' as %2F, '?' as %3F and '#' as %23"
    return fix


def shown_url(url: str) -> str:
    """The URL for an error message, its password redacted (also one that ends the host
    early with an unencoded '/')."""
    return repr(redact_invalid_url(url))


Regex = Annotated[str, AfterValidator(check_regex)]
BytesRegex = Annotated[str, AfterValidator(check_bytes_regex)]
RedisUrl = Annotated[str, AfterValidator(check_redis_url)]
HttpUrl = Annotated[str, AfterValidator(check_http_url)]
SecretHttpUrl = Annotated[SecretStr, AfterValidator(check_secret_http_url)]
ExistingFile = Annotated[str, AfterValidator(check_existing_file)]
Host = Annotated[str, AfterValidator(check_host)]
