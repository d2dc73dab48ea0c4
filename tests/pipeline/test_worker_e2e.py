"""End to end through real Redis and real `celery -A tasks worker` processes."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from celery import Celery

from opsq.core import keys
from tests.pipeline.conftest import LocalHTTP, run_cli, write_targets
from tests.support.tools import require_tool
from tests.support.workers import Worker


def test_probe_wait_json_reports_up_and_down_and_exits_1(
    start_worker: Callable[..., Worker], redis_url: str, http_server: LocalHTTP, tmp_path: Path
) -> None:
    start_worker()
    targets = [{"name": f"ok{i}", "url": f"{http_server.url}/ok?i={i}"} for i in range(5)] + [
        {"name": "fail", "url": f"{http_server.url}/fail", "retries": 1},
        {"name": "refused", "url": "http://127.0.0.1:1/"},
    ]
    path = write_targets(tmp_path / "t.yaml", targets, timeout="3s", backoff_base="10ms")
    proc = run_cli(["probe", str(path), "--wait", "--output", "json"], redis_url,
                   env={"OPSQ_PROBES__BATCH_SIZE": "3"})  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["total"], summary["up"], summary["down"]) == (7, 5, 2)
    by_name = {r["name"]: r for r in summary["results"]}
    assert [r["name"] for r in summary["results"]] == [t["name"] for t in targets]
    assert by_name["ok0"]["status_code"] == 200
    assert by_name["fail"]["status_code"] == 503
    assert by_name["fail"]["attempts"] == 2  # 5xx is retried once, then final
    assert by_name["refused"]["up"] is False
    assert "connection refused" in by_name["refused"]["error"]
    assert http_server.hits["/fail"] == 2

    # The stored summary is what `opsq runs show` prints, with the same exit code.
    shown = run_cli(["runs", "show", summary["run_id"], "--output", "json"], redis_url)
    assert shown.returncode == 1
    assert json.loads(shown.stdout)["results"] == summary["results"]
    listed = run_cli(["runs", "list"], redis_url)
    assert summary["run_id"] in listed.stdout


def test_all_up_exits_0_and_prints_a_table(
    start_worker: Callable[..., Worker], redis_url: str, http_server: LocalHTTP, tmp_path: Path
) -> None:
    start_worker()
    path = write_targets(tmp_path / "t.yaml", [{"name": "api", "url": f"{http_server.url}/ok"}])
    proc = run_cli(["probe", str(path), "--wait"], redis_url)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^api\s+http://127\.0\.0\.1:\d+/ok\s+up\s+200\s+1\s", proc.stdout, re.M)
    assert "1 targets, 1 up, 0 down" in proc.stdout


def test_worker_metrics_sum_both_pool_processes_and_pass_promtool(
    start_worker: Callable[..., Worker], redis_url: str, http_server: LocalHTTP, tmp_path: Path
) -> None:
    """Slow targets in one-target batches keep both prefork children busy at once."""
    worker = start_worker(concurrency=2)
    targets = [{"name": f"s{i}", "url": f"{http_server.url}/slow?delay=0.5&i={i}"}
               for i in range(6)]  # fmt: skip
    path = write_targets(tmp_path / "t.yaml", targets)
    proc = run_cli(["probe", str(path), "--wait"], redis_url,
                   env={"OPSQ_PROBES__BATCH_SIZE": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    children = set(re.findall(r"(ForkPoolWorker-\d+)\] Task opsq\.probe_batch\S+ succeeded",
                              worker.log()))  # fmt: skip
    assert len(children) == 2, "both pool processes must have run batches"
    port = int(re.findall(r"worker metrics on http://127\.0\.0\.1:(\d+)/metrics", worker.log())[-1])
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'opsq_batches_total{outcome="done"} 6.0' in text
    assert 'opsq_probe_total{group="default",result="up"} 6.0' in text
    assert "opsq_results_written_total 6.0" in text
    check = subprocess.run([require_tool("promtool"), "check", "metrics"], input=text,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read())
    assert ready["redis"] is True
    assert ready["redis_memory"]["used_bytes"] > 0  # reported, not a readiness condition


def test_a_pickled_message_is_refused_by_the_worker(
    start_worker: Callable[..., Worker], redis_url: str
) -> None:
    """JSON only: a pickle payload in the queue is never deserialized or run."""
    worker = start_worker()
    sender = Celery("evil", broker=redis_url, set_as_current=False)
    sender.conf.task_serializer = "pickle"
    sender.conf.accept_content = ["pickle", "json"]
    sender.send_task("opsq.probe_batch", kwargs={"run_id": "x", "batch_id": "b0", "targets": []},
                     queue=keys.QUEUE_PROBES, serializer="pickle")  # fmt: skip
    for _ in range(100):
        if "untrusted content of type pickle" in worker.log():
            break
        time.sleep(0.1)
    assert "Refusing to deserialize untrusted content of type pickle" in worker.log()
    assert "Task opsq.probe_batch" not in worker.log()
