"""Secrets never printed: URL user info and secret-named query parameters."""

from __future__ import annotations

import orjson
import pytest

from opsq.core.config.probes import Target
from opsq.core.redact import redact, redact_text, redact_url
from opsq.core.runs import batch_message, encode_result, printable_result
from opsq.core.targets import encode_targets


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("https://api.example.com/v1/health?access_token=tok-1&page=2", "tok-1"),
        ("https://h/?token=tok-2", "tok-2"),
        ("https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=c2lnbmF0dXJl%3D", "c2lnbmF0"),
        ("https://h/login?user=ann&password=hunter2", "hunter2"),
        ("https://h/?api_key=k-3", "k-3"),
        ("https://maps.example.com/?key=k-4", "k-4"),
        ("https://h/?apiKey=k-5", "k-5"),
        ("https://h/?client_secret=cs-6", "cs-6"),
        ("https://h/?auth=a-7", "a-7"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA8&X-Amz-Signature=beef9", "beef9"),
        ("https://h/callback#access_token=frag-10&state=x", "frag-10"),
        ("https://h/?private_token=glpat-11", "glpat-11"),
        ("https://user:pw-12@h/?q=1", "pw-12"),
    ],
)
def test_secrets_in_query_strings_are_redacted(url: str, secret: str) -> None:
    """Issue 8 §4: ?access_token=, token=, sig=, password= (and kin) were printed as is."""
    redacted = redact_url(url)
    assert secret not in redacted
    assert "***" in redacted
    assert secret not in redact_text(f"GET {url} failed: timeout")


@pytest.mark.parametrize(
    "url", ["redis://:p@ssw0rd@127.0.0.1:6379/0", "redis://user:p@ss:w0rd@h:6379/0"]
)
def test_a_password_holding_an_at_sign_is_redacted_whole_in_free_text(url: str) -> None:
    """urlsplit takes the last '@' (such a URL validates and works), the free-text pattern
    stopped at the first: log lines kept "ssw0rd" (hostile check 89 F8)."""
    line = redact_text(f"cannot reach {url}: refused")
    assert "w0rd" not in line
    assert "***@" in line
    assert "w0rd" not in redact_url(url)


def test_harmless_parameters_are_kept() -> None:
    """Only secret-named parameters go: page, sort, monkey and state stay readable."""
    url = "https://h/p?page=2&sort=name&monkey=banana&state=s"
    assert redact_url(url) == url
    assert redact_url("https://h/p?sig=abc&page=2") == "https://h/p?sig=***&page=2"


def test_config_show_tree_redacts_query_tokens() -> None:
    """`opsq config show`: a sink or target URL with ?token= loses the token."""
    tree = {"logs": {"shipper": {"sink": {"url": "https://loki/push?token=t-13"}}}}
    assert "t-13" not in str(redact(tree))


def test_config_show_redacts_secret_headers() -> None:
    """`headers: {X-Api-Key: ..., Cookie: ...}` of an inline probe set were printed by
    `opsq config show` (only api_key with an underscore was known) (hostile check 89 F10)."""
    headers = {
        "X-Api-Key": "s-1", "Cookie": "session=s-2", "Ocp-Apim-Subscription-Key": "s-3",
        "X-Auth-Token": "s-4", "Proxy-Authorization": "Basic s-5", "Accept": "text/html",
    }  # fmt: skip
    shown = redact({"targets": [{"name": "a", "headers": headers, "key_file": "/k.pem"}]})
    target = shown["targets"][0]
    assert set(target["headers"].values()) == {"***", "text/html"}
    assert target["key_file"] == "/k.pem"


def test_probe_results_are_printed_redacted() -> None:
    """`opsq probe --output json` and `opsq runs show` print URLs and errors redacted."""
    url = "https://api.example.com/health?access_token=t-14"
    stored = {"name": "api", "url": url, "up": False,
              "error": f"Client error '401' for url '{url}'"}  # fmt: skip
    shown = printable_result(orjson.loads(encode_result(stored, 0, 1.0)), 1.0)
    assert "t-14" not in orjson.dumps(shown).decode()
    assert shown["url"] == "https://api.example.com/health?access_token=***"


def test_task_repr_in_logs_and_flower_carries_no_urls() -> None:
    """Celery logs and Flower show kwargsrepr: a count of targets, not their URLs."""
    targets = [Target(name=f"t{i}", url=f"https://h/{i}?token=t-15") for i in range(3)]
    [batch] = encode_targets(targets, 10)
    shown = orjson.loads(batch_message("r1", 0, batch)[1])["headers"]["kwargsrepr"]
    assert "t-15" not in shown
    assert "<3 targets>" in shown
    assert "'r1'" in shown
