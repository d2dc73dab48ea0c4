"""`opsq probe` input formats and all-or-nothing submission; `opsq runs list|show` output.

No worker runs here: results are written through the run store the way a worker writes
them, so the tests can build runs larger than one packed chunk in a second.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import yaml

from opsq.cli.main import main
from opsq.core import keys, loading, targets
from opsq.core.config.probes import Target
from opsq.core.errors import ConfigError
from opsq.core.runs import AsyncRunStore, RunStore, encode_result, result_key
from opsq.core.settings import load_settings
from producers.probes import ProbeProducer


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = int(main(argv) or 0)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _targets(count: int) -> list[dict[str, Any]]:
    return [{"name": f"t{i}", "url": f"http://127.0.0.1:9/{i}"} for i in range(count)]


def _complete(redis_url: str, run_id: str, count: int, *, pack: bool) -> None:
    """Write one result per target (every third down), as workers do; pack if asked."""
    store = RunStore.from_url(redis_url)
    created = store.run_meta(run_id).created_at
    entries = []
    for i in range(count):
        up = i % 3 != 0
        result = {"name": f"t{i}", "url": f"http://127.0.0.1:9/{i}", "up": up,
                  "status_code": 200 if up else 503, "attempts": 1, "duration_s": 0.002,
                  "phases": {}, "error": None if up else "status 503", "error_kind": None,
                  "started_at": created}  # fmt: skip
        entries.append((result_key(i), encode_result(result, i, created), up))
    for start in range(0, count, 500):
        store.record(run_id, entries[start : start + 500])
    store.close()
    if pack:

        async def finalize() -> None:
            client = aioredis.Redis.from_url(redis_url, decode_responses=True)
            assert await AsyncRunStore(client).finalize(run_id) is not None
            await client.aclose()

        asyncio.run(finalize())


def test_a_json_targets_file_is_accepted_with_the_same_schema(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Generated inventories can be JSON: same fields, same defaults, same run."""
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps({"defaults": {"timeout": "2s"}, "targets": _targets(3)}))
    code, out, err = _run(["probe", str(path), "--redis-url", redis_url, "--output", "json"],
                          capsys)  # fmt: skip
    assert code == 0, err
    submitted = json.loads(out)
    assert submitted["total"] == 3
    assert redis_client.llen(keys.QUEUE_PROBES) == submitted["batches"]


def test_a_json_targets_file_with_a_byte_order_mark_is_accepted(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Windows tools write UTF-8 JSON with a BOM (PowerShell's ``-Encoding UTF8``); a YAML
    file with one was accepted, the same inventory as JSON refused (hostile check 89 F7)."""
    path = tmp_path / "inventory.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"targets": _targets(3)}).encode())
    code, out, err = _run(["probe", str(path), "--redis-url", redis_url, "--output", "json"],
                          capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["total"] == 3
    assert redis_client.llen(keys.QUEUE_PROBES) == json.loads(out)["batches"]


def test_a_bad_json_targets_file_exits_2_naming_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Broken JSON is a config error with a position, like broken YAML."""
    path = tmp_path / "inventory.json"
    path.write_text('{"targets": [\n  {"name": "a", "url": "http://x/"},\n]}')
    code, _, err = _run(["probe", str(path)], capsys)
    assert code == 2
    assert f"{path}: not valid JSON at line 2, column 36: trailing comma" in err


def test_a_bad_entry_at_the_end_of_a_large_file_enqueues_nothing(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Validation runs chunk by chunk, but nothing is sent until every chunk passed."""
    path = tmp_path / "targets.yaml"
    entries = [*_targets(1000), {"name": "bad", "url": "ftp://x/"}]
    path.write_text(yaml.safe_dump({"targets": entries}))
    code, out, err = _run(["probe", str(path), "--redis-url", redis_url], capsys)
    assert code == 2
    assert "targets[1000] (name 'bad').url" in err
    assert out == ""
    assert redis_client.llen(keys.QUEUE_PROBES) == 0
    assert redis_client.zcard(keys.RUNS_INDEX) == 0


def test_duplicates_are_found_across_validation_chunks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(name, url) uniqueness holds for the whole file, not per chunk."""
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": [*_targets(250), _targets(1)[0]]}))
    code, _, err = _run(["probe", str(path)], capsys)
    assert code == 2
    assert (
        "targets[250] (name 't0'): target 't0' with url http://127.0.0.1:9/0 appears twice" in err
    )


def test_yaml_is_read_with_libyaml_when_pyyaml_has_it() -> None:
    """The fast C loader is used when available (the pure-Python one is ~10x slower)."""
    expected = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
    assert loading.SafeLoader is expected


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "live"])
def test_runs_show_json_streams_every_result_in_file_order(
    redis_url: str, capsys: pytest.CaptureFixture[str], pack: bool
) -> None:
    """More results than one stored chunk, read back in order whether or not the run
    was packed yet; the output is one valid JSON document with the counts."""
    producer = ProbeProducer(load_settings(None, redis_url=redis_url))
    count = 2500
    run_id = producer.submit([Target(**t) for t in _targets(count)], source="big.yaml").run_id
    producer.close()
    _complete(redis_url, run_id, count, pack=pack)
    code, out, _ = _run(["runs", "show", run_id, "--output", "json", "--redis-url", redis_url],
                        capsys)  # fmt: skip
    assert code == 1  # a third are down
    summary = json.loads(out)
    assert [r["name"] for r in summary["results"]] == [f"t{i}" for i in range(count)]
    assert (summary["total"], summary["up"], summary["down"], summary["pending"]) == (
        count, count - 834, 834, 0,
    )  # fmt: skip
    assert summary["results"][0]["error"] == "status 503"


def test_runs_list_shows_up_down_duration_and_age(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each line: run id, done/total, up, down, duration, age and source."""
    producer = ProbeProducer(load_settings(None, redis_url=redis_url))
    run_id = producer.submit([Target(**t) for t in _targets(6)], source="web.yaml").run_id
    pending = producer.submit([Target(**t) for t in _targets(2)], source="slow.yaml").run_id
    producer.close()
    _complete(redis_url, run_id, 6, pack=True)
    time.sleep(0.01)
    code, out, _ = _run(["runs", "list", "--redis-url", redis_url], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "DONE", "UP", "DOWN", "DURATION", "AGE", "SOURCE"]
    finished = next(line for line in lines if line.startswith(run_id)).split()
    assert finished[1:4] == ["6/6", "4", "2"]
    assert finished[-2:] == ["ago", "web.yaml"]
    running = next(line for line in lines if line.startswith(pending))
    assert "0/2" in running
    assert "(running)" in running


STREAMED = """\
defaults: &base {timeout: 2s, expect: {status: [200]}}
extra_defaults: &more {retries: 1}
targets:
  - {name: a, url: "http://127.0.0.1:9/a"}
  - {<<: *more, name: b, url: "http://127.0.0.1:9/b", expect: {max_latency: 1s}}
  - name: c
    url: http://127.0.0.1:9/c
"""


def test_a_large_yaml_file_streams_to_the_same_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read an item at a time (libyaml events, PyYAML's composer): anchors, merge keys
    and defaults give exactly the batches of the whole-document read."""
    path = tmp_path / "targets.yaml"
    path.write_text(STREAMED.replace("extra_defaults", "x-anchors"))
    monkeypatch.setattr(targets, "STREAM_BYTES", 10**12)
    with pytest.raises(ConfigError, match="x-anchors: unknown field"):
        targets.load_batches(path, 2)  # both paths report the unknown key the same way
    monkeypatch.setattr(targets, "STREAM_BYTES", 0)
    with pytest.raises(ConfigError, match="x-anchors: unknown field"):
        targets.load_batches(path, 2)
    path.write_text(STREAMED.replace("extra_defaults: &more {retries: 1}\n", "")
                    .replace("<<: *more, ", "<<: *base, "))  # fmt: skip
    streamed = targets.load_batches(path, 2)
    monkeypatch.setattr(targets, "STREAM_BYTES", 10**12)
    assert streamed == targets.load_batches(path, 2)
    assert [b.offset for b in streamed] == [0, 2]
    assert b'"max_latency":1.0' in streamed[0].targets_json


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("targets:\n  - {name: a, url: 'ftp://x/'}\n",
                     "targets[0] (name 'a').url: url 'ftp://x/'", id="bad-entry"),
        pytest.param("targets:\n  - {name: a, url: 'http://x/'}\n  - {name: a, url: 'http://x/'}\n",
                     "targets[1] (name 'a'): target 'a' with url http://x/ appears twice",
                     id="duplicate"),
        pytest.param("targets:\n  - {name: a, url: 'http://x/'}\nnope: 1\n",
                     "field nope: unknown field", id="unknown-key-after"),
        pytest.param("targets: []\n", "List should have at least 1 item", id="empty"),
        pytest.param("targets:\n  - {name: a, url: 'http://x/'}\n  - {name: [\n",
                     "not valid YAML at line 4", id="broken-yaml-mid-list"),
    ],
)  # fmt: skip
def test_a_streamed_file_reports_problems_like_a_whole_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    """Errors found while streaming name the file, the entry and the field."""
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    monkeypatch.setattr(targets, "STREAM_BYTES", 0)
    with pytest.raises(ConfigError) as info:
        targets.load_batches(path, 1)
    assert str(path) in str(info.value)
    assert expected in str(info.value)
