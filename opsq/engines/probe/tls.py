"""TLS for probes: one SSL context per trust and identity, and the chain's expiry.

- **Contexts** are built once per ``(verify_tls, ca_file, cert_file, key_file)`` and
  kept for the engine's life: loading the system's CA store costs milliseconds, far
  more than a probe. ``ca_file`` replaces the system's CAs for that target (as
  ``curl --cacert`` does); ``cert_file``/``key_file`` are the client certificate for
  mTLS endpoints. A file that cannot be loaded on this worker (missing here, wrong
  key) fails the probe with kind ``other`` and a reason naming the file, and is tried
  again on the next probe rather than cached.
- **Earliest expiry in the chain**, the figure people alert on (blackbox_exporter's
  ``probe_ssl_earliest_cert_expiry``): every certificate the server sent, leaf and
  intermediates, is read, whether or not it was verified. Python 3.13 exposes that
  chain as ``SSLObject.get_unverified_chain()``; 3.10-3.12 have the same method on the
  private ``_sslobj`` (OpenSSL's ``SSL_get_peer_cert_chain``), which
  ``tests/engine/test_tls.py`` checks with a real intermediate CA. Without either, only
  the leaf is read.
"""

from __future__ import annotations

import datetime as dt
import functools
import ssl
from typing import Any

from cryptography import x509

from opsq.core.config.probes import Target
from opsq.engines.probe.errors import ProbeFailure

SECONDS_PER_DAY = 86400.0
_DER = 2  # _ssl.ENCODING_DER: the private constant is not re-exported by ssl

TlsKey = tuple[bool, str | None, str | None, str | None]


def tls_key(target: Target) -> TlsKey:
    return (target.verify_tls, target.ca_file, target.cert_file, target.key_file)


class TlsContexts:
    """SSL contexts by :func:`tls_key`; ``default`` stands in for the system's CAs."""

    def __init__(self, default: ssl.SSLContext | None = None) -> None:
        self._default = default
        self._contexts: dict[TlsKey, ssl.SSLContext] = {}

    def get(self, target: Target) -> ssl.SSLContext:
        return self._get(tls_key(target))

    def plain(self, verify: bool) -> ssl.SSLContext:
        """The context for a key without files (http:// targets, redirects to https)."""
        return self._get((verify, None, None, None))

    def _get(self, key: TlsKey) -> ssl.SSLContext:
        context = self._contexts.get(key)
        if context is None:
            context = self._build(*key)
            self._contexts[key] = context
        return context

    def _build(
        self, verify: bool, ca_file: str | None, cert_file: str | None, key_file: str | None
    ) -> ssl.SSLContext:
        if verify and ca_file is None and cert_file is None and self._default is not None:
            return self._default
        if not verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif ca_file is not None:
            context = _with_cas(ca_file)
        else:
            context = ssl.create_default_context()
        if cert_file is not None:
            _load_identity(context, cert_file, key_file)
        return context


def _with_cas(ca_file: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=_loaded("ca_file", ca_file))
    except ssl.SSLError as exc:
        raise ProbeFailure("other", f"cannot load ca_file {ca_file}: {exc.reason or exc}") from exc


def _loaded(field: str, path: str) -> str:
    """``path`` if it can be read here, else a probe failure naming the field."""
    try:
        with open(path, "rb"):
            return path
    except OSError as exc:
        raise ProbeFailure("other", f"cannot read {field} {path}: {exc.strerror}") from exc


def _load_identity(context: ssl.SSLContext, cert_file: str, key_file: str | None) -> None:
    _loaded("cert_file", cert_file)
    if key_file is not None:
        _loaded("key_file", key_file)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise ProbeFailure(
            "other", f"cannot load the client certificate {cert_file}: {exc.reason or exc}"
        ) from exc


@functools.lru_cache(maxsize=4096)
def not_after(der: bytes) -> float:
    """Epoch seconds at which the DER certificate expires."""
    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()


def chain_not_after(transport: Any) -> float | None:
    """The earliest expiry of the chain a TLS transport (or stream) received."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    ders = _chain(ssl_object)
    return min(not_after(der) for der in ders) if ders else None


def _chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    chain = getter() if getter is not None else None
    if chain:
        return [c if isinstance(c, bytes) else c.public_bytes(_DER) for c in chain]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def days_left(expires_at: float | None, *, now: dt.datetime | None = None) -> float | None:
    """Days until ``expires_at`` (negative once expired), to 3 decimals."""
    if expires_at is None:
        return None
    moment = (now or dt.datetime.now(dt.UTC)).timestamp()
    return round((expires_at - moment) / SECONDS_PER_DAY, 3)
