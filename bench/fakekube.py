"""Benchmark: what the fake Kubernetes API server costs on top of bare HTTP.

The cleanup benchmark counts requests against ``tests/fakekube``; this one shows how
much of its wall time is the fake itself. Same process, same ``kubernetes`` client,
same keep-alive connection pool, three targets:

- the floor: a stdlib ``ThreadingHTTPServer`` that answers every GET with one fixed,
  pre-serialised Pod (no routing, no auth, no store) - the peer;
- the fake: ``read_namespaced_pod`` (route, bearer-token authentication, RBAC, store
  lookup, JSON encoding, request accounting);
- the fake: ``delete_namespaced_config_map`` with a UID precondition (a write: new
  resourceVersion, history entry, watcher fan-out) against one open watch.

Also: one paginated LIST of N Jobs (``limit=500``) and the latency from a write to its
watch event. ``OPSQ_BENCH_FAKEKUBE_N`` scales the object count (default 10,000).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import kubernetes  # noqa: E402
from kubernetes import client, watch  # noqa: E402

from tests.fakekube.server import FakeKube  # noqa: E402

REQUESTS = 1500


class _Floor(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    payload = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _rate(label: str, call: Any, n: int = REQUESTS) -> float:
    for _ in range(50):  # warm the connection pool and caches
        call(0)
    start = time.perf_counter()
    for i in range(n):
        call(i)
    elapsed = time.perf_counter() - start
    print(f"  {label:<46} {n / elapsed:8.0f} req/s  {elapsed / n * 1e3:6.2f} ms/req")
    return n / elapsed


def _floor_rate(pod: dict[str, Any], tmp: Path) -> float:
    _Floor.payload = json.dumps(pod).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Floor)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp / "floor.kubeconfig"
    FakeKube.write_kubeconfig(config, f"http://127.0.0.1:{server.server_address[1]}", "x")
    api = kubernetes.config.new_client_from_config(config_file=str(config))
    v1 = client.CoreV1Api(api)
    try:
        return _rate(
            "floor: stdlib server, fixed Pod body",
            lambda _i: v1.read_namespaced_pod("p", "default"),
        )
    finally:
        api.close()
        server.shutdown()
        server.server_close()


def _watch_latency(fake: FakeKube, v1: client.CoreV1Api) -> float:
    seen: dict[str, float] = {}
    w = watch.Watch()
    since = str(fake.resource_version)

    def run() -> None:
        for ev in w.stream(
            v1.list_namespaced_config_map, "lat", resource_version=since, timeout_seconds=30
        ):
            seen[ev["object"].metadata.name] = time.perf_counter()
            if len(seen) == 200:
                w.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    fake.wait_for_watches(1)
    sent: dict[str, float] = {}
    for i in range(200):
        sent[f"c{i}"] = time.perf_counter()
        fake.create("v1/configmaps", {"metadata": {"name": f"c{i}"}}, "lat")
        time.sleep(0.002)
    thread.join(timeout=30)
    delays = sorted(seen[k] - sent[k] for k in seen)
    return delays[len(delays) // 2] * 1e3


def _delete_rate(fake: FakeKube, v1: client.CoreV1Api) -> float:
    """DELETEs with a UID precondition while one watch is open on the namespace."""
    total = REQUESTS + 50  # _rate's warm-up consumes 50
    uids = [
        fake.create("v1/configmaps", {"metadata": {"name": f"cm{i}"}}, "default")["metadata"]["uid"]
        for i in range(total)
    ]
    names = iter(range(total))

    def delete(_i: int) -> None:
        j = next(names)
        body = {"preconditions": {"uid": uids[j]}, "propagationPolicy": "Background"}
        v1.delete_namespaced_config_map(f"cm{j}", "default", body=body)

    holder = threading.Thread(
        target=lambda: list(
            watch.Watch().stream(v1.list_namespaced_config_map, "default", timeout_seconds=30)
        ),
        daemon=True,
    )
    holder.start()
    fake.wait_for_watches(1)
    try:
        return _rate("fake: DELETE configmap (precondition, 1 watch)", delete)
    finally:
        fake.break_watches()


def _list_all(fake: FakeKube, api: kubernetes.client.ApiClient, n: int) -> tuple[int, int, float]:
    """(items, pages, seconds) for a paginated LIST of ``n`` Jobs in 50 namespaces."""
    for i in range(n):
        fake.create("batch/v1/jobs", {"metadata": {"name": f"j{i:05d}"}, "spec": {}}, f"ns{i % 50}")
    batch = client.BatchV1Api(api)
    start = time.perf_counter()
    token, pages, items = None, 0, 0
    while True:
        page = batch.list_job_for_all_namespaces(limit=500, _continue=token)
        pages, items = pages + 1, items + len(page.items)
        token = page.metadata._continue
        if not token:
            return items, pages, time.perf_counter() - start


def main() -> int:
    n = int(os.environ.get("OPSQ_BENCH_FAKEKUBE_N", "10000"))
    with TemporaryDirectory() as tmp_dir, FakeKube() as fake:
        tmp = Path(tmp_dir)
        pod = fake.create("v1/pods", {"metadata": {"name": "p"}}, "default")
        config = fake.kubeconfig(tmp / "kc")
        api = kubernetes.config.new_client_from_config(config_file=str(config))
        v1 = client.CoreV1Api(api)
        print(f"requests through the kubernetes client ({REQUESTS} each, one thread):")
        floor = _floor_rate(pod, tmp)
        get = _rate("fake: GET pod", lambda _i: v1.read_namespaced_pod("p", "default"))
        delete = _delete_rate(fake, v1)
        items, pages, list_s = _list_all(fake, api, n)
        latency = _watch_latency(fake, v1)
        api.close()
    print(f"\n  fake GET / floor GET:      {get / floor:5.2f}x the floor's rate")
    print(f"  fake DELETE / floor GET:   {delete / floor:5.2f}x the floor's rate")
    per_page = list_s / pages * 1e3
    print(
        f"  LIST {items} Jobs in {pages} pages of 500: {list_s:.2f} s ({per_page:.0f} ms/page, "
        "client deserialisation included)"
    )
    print(f"  write -> watch event, median of 200: {latency:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
