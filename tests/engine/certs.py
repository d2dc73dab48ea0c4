"""A CA chain whose intermediate expires before its leaf (trustme cannot date a CA).

Built with ``cryptography`` directly: root (one year) -> intermediate (``days_intermediate``)
-> leaf for 127.0.0.1/localhost (``days_leaf``). The server sends leaf + intermediate,
so a client that reads only the leaf sees the later date.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Key = ec.EllipticCurvePrivateKey


def _cert(
    subject: str, key: Key, issuer: x509.Certificate | None, issuer_key: Key, days: float, ca: bool
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def chain_server(
    directory: Path, *, days_leaf: float, days_intermediate: float
) -> tuple[ssl.SSLContext, Path, x509.Certificate]:
    """(server context, root CA file to trust, the intermediate certificate)."""
    root_key, mid_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("opsq test root", root_key, None, root_key, 365, ca=True)
    mid = _cert("opsq test intermediate", mid_key, root, root_key, days_intermediate, ca=True)
    leaf = _cert("localhost", leaf_key, mid, mid_key, days_leaf, ca=False)
    chain_file, key_file, ca_file = (directory / n for n in ("chain.pem", "key.pem", "ca.pem"))
    chain_file.write_bytes(_pem(leaf) + _pem(mid))
    key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ca_file.write_bytes(_pem(root))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain_file, key_file)
    return context, ca_file, mid
