"""TLS probes: certificate expiry (earliest in the chain) in results and gauges,
per-target CA files and client certificates (mTLS), against local TLS servers."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from prometheus_client import REGISTRY

from opsq.core.config.probes import ON_WORKER, Target, TargetsFile
from opsq.core.loading import validate_file
from opsq.engines.probe import ProbeResult, run_probes
from tests.engine.certs import chain_server
from tests.engine.conftest import ServerState, serving, target

DAY = 86400.0
TRANSPORTS = pytest.mark.parametrize("transport", ["aiohttp", "httpx"])


@dataclass
class Sites:
    urls: dict[str, str]
    """Key (days5, days30, expired, mtls, chain) -> base URL."""
    expiry: dict[str, float]
    """Key -> epoch seconds at which the leaf (chain: the intermediate) expires."""
    ca_file: str
    chain_ca_file: str
    client_cert: str
    client_key: str
    client_combined: str


def _leaf(ca: trustme.CA, days: float, client_ca: trustme.CA | None = None):  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    leaf = ca.issue_cert(
        "127.0.0.1", "localhost", not_before=now - dt.timedelta(days=10),
        not_after=now + dt.timedelta(days=days),
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return context, cert.not_valid_after_utc.timestamp()


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    directory = tmp_path_factory.mktemp("tls")
    ca, client_ca = trustme.CA(), trustme.CA()
    made = {
        "days5": _leaf(ca, 5),
        "days30": _leaf(ca, 30),
        "expired": _leaf(ca, -2),
        "mtls": _leaf(ca, 30, client_ca),
    }
    (directory / "chain").mkdir()
    chain_ctx, chain_ca, intermediate = chain_server(
        directory / "chain", days_leaf=30, days_intermediate=5
    )
    contexts = [ctx for ctx, _ in made.values()] + [chain_ctx]
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client = client_ca.issue_cert("probe-client@example.com")
    client.cert_chain_pems[0].write_to_path(str(directory / "client.crt"))
    client.private_key_pem.write_to_path(str(directory / "client.key"))
    client.private_key_and_cert_chain_pem.write_to_path(str(directory / "client.pem"))
    with serving(ServerState(), contexts) as ports:
        keys = [*made, "chain"]
        yield Sites(
            urls={k: f"https://127.0.0.1:{port}" for k, port in zip(keys, ports, strict=True)},
            expiry={k: e for k, (_, e) in made.items()}
            | {"chain": intermediate.not_valid_after_utc.timestamp()},
            ca_file=str(directory / "ca.pem"),
            chain_ca_file=str(chain_ca),
            client_cert=str(directory / "client.crt"),
            client_key=str(directory / "client.key"),
            client_combined=str(directory / "client.pem"),
        )


def _probe(t: Target, transport: str = "aiohttp", **kwargs: object) -> ProbeResult:
    [result] = run_probes([t], transport=transport, **kwargs)  # type: ignore[arg-type]
    return result


@TRANSPORTS
def test_cert_days_left_for_certificates_of_5_30_and_minus_2_days(
    sites: Sites, transport: str
) -> None:
    """Issue 9 acceptance: the days left (and the exact expiry) are in every result."""
    for site, days, verify in (("days5", 5, True), ("days30", 30, True), ("expired", -2, False)):
        t = target(f"{sites.urls[site]}/ok", ca_file=sites.ca_file, verify_tls=verify)
        result = _probe(t, transport)
        assert result.up, result.error
        assert result.cert_days_left is not None
        assert abs(result.cert_days_left - days) < 0.01, (site, result.cert_days_left)
        assert result.cert_expires_at == sites.expiry[site]
        assert result.to_dict()["cert_days_left"] == result.cert_days_left


@TRANSPORTS
def test_the_earliest_expiry_in_the_chain_counts_not_the_leafs(
    sites: Sites, transport: str
) -> None:
    """The intermediate expires in 5 days, the leaf in 30: the chain is as weak as its
    intermediate (reading only the leaf said 30). Also the tripwire for the private
    ``_sslobj.get_unverified_chain`` on Python < 3.13."""
    t = target(f"{sites.urls['chain']}/ok", ca_file=sites.chain_ca_file)
    result = _probe(t, transport)
    assert result.up, result.error
    assert result.cert_expires_at == sites.expiry["chain"]
    assert result.cert_days_left is not None
    assert 4.9 < result.cert_days_left <= 5.0


def test_cert_expiry_gauge_is_the_groups_earliest_and_per_url_only_when_asked(
    sites: Sites, key: str
) -> None:
    group = f"certs-{key}"
    targets = [
        target(f"{sites.urls[s]}/ok?{key}", name=s, group=group, verify_tls=False)
        for s in ("days5", "days30", "expired")
    ]
    run_probes(targets)
    gauge = "opsq_probe_cert_expiry_timestamp_seconds"
    assert REGISTRY.get_sample_value(gauge, {"group": group}) == sites.expiry["expired"]
    url_gauge = "opsq_probe_url_cert_expiry_timestamp_seconds"
    five = {"group": group, "url": targets[0].url}
    assert REGISTRY.get_sample_value(url_gauge, five) is None
    run_probes(targets, url_labels=True)
    assert REGISTRY.get_sample_value(url_gauge, five) == sites.expiry["days5"]


def test_expired_certificate_with_verification_is_a_cert_failure(sites: Sites) -> None:
    result = _probe(target(f"{sites.urls['expired']}/ok", ca_file=sites.ca_file, retries=2))
    assert (result.up, result.error_kind, result.attempts) == (False, "cert", 1)
    assert "certificate has expired" in (result.error or "")


def test_per_target_ca_file_replaces_the_system_trust(sites: Sites) -> None:
    trusted = _probe(target(f"{sites.urls['days30']}/ok", ca_file=sites.ca_file))
    untrusted = _probe(target(f"{sites.urls['days30']}/ok"))
    assert trusted.up, trusted.error
    assert (untrusted.up, untrusted.error_kind) == (False, "cert")


@TRANSPORTS
def test_mtls_endpoint_needs_the_client_certificate(sites: Sites, transport: str) -> None:
    url = f"{sites.urls['mtls']}/ok"
    without = _probe(target(url, ca_file=sites.ca_file), transport)
    separate = target(url, ca_file=sites.ca_file, cert_file=sites.client_cert,
                      key_file=sites.client_key)  # fmt: skip
    combined = target(url, ca_file=sites.ca_file, cert_file=sites.client_combined)
    unverified = target(url, verify_tls=False, cert_file=sites.client_combined)
    # TLS 1.3: the handshake completes, then the server hangs up (no alert reaches us).
    assert (without.up, without.error_kind) == (False, "connect"), without.error
    for t in (separate, combined, unverified):
        result = _probe(t, transport)
        assert result.up, result.error


def test_a_ca_file_missing_on_the_worker_fails_the_probe_not_the_batch(
    sites: Sites, tmp_path: Path
) -> None:
    """Loading checks that files exist; a worker (ON_WORKER context) does not, and a
    file it lacks makes that probe down with a reason naming it."""
    data = {"name": "t", "url": f"{sites.urls['days30']}/ok", "ca_file": str(tmp_path / "x.pem")}
    with pytest.raises(ValueError, match="does not exist"):
        Target.model_validate(data)
    result = _probe(Target.model_validate(data, context=ON_WORKER))
    assert (result.up, result.error_kind) == (False, "other")
    assert f"cannot read ca_file {tmp_path / 'x.pem'}" in (result.error or "")


def test_tls_files_resolve_against_the_targets_file_and_key_needs_cert(
    sites: Sites, tmp_path: Path
) -> None:
    """A relative ca_file is relative to the targets file and travels absolute to workers."""
    ca = Path(sites.ca_file)
    targets = tmp_path / "targets.yaml"
    targets.write_text(f"targets: [{{name: t, url: 'https://x/', ca_file: {ca.name}}}]\n")
    (tmp_path / ca.name).write_bytes(ca.read_bytes())
    loaded = validate_file(TargetsFile, targets)
    assert loaded.targets[0].ca_file == str(tmp_path / ca.name)
    with pytest.raises(ValueError, match="key_file is set without cert_file"):
        Target.model_validate({"name": "t", "url": "https://x/", "key_file": "/etc/hostname"})
