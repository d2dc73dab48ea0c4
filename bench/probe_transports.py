"""Probe engine throughput: aiohttp-backed httpx transport vs httpx's own transport.

Starts a local HTTP server (nginx-light, installed with apt-get when missing; an
aiohttp server in a subprocess otherwise), then probes N targets in-process with each
transport, fresh connection per probe (the engine's default, as blackbox_exporter
does), and prints probes/s and the ratio. Raw aiohttp (no httpx, no engine) runs in the
same session as a ceiling, so the engine's own overhead is visible too. Besides
probes/s (wall clock, sensitive to whatever else runs) it prints the client's CPU time
per probe, which is what the transport choice changes and is steadier under load.
Every case runs on :func:`opsq.core.aio.run` (uvloop when installed, relaxed garbage
collection), the way the engine runs in the worker.

    python -m bench probe_transports          # N=3000
    OPSQ_BENCH_N=10000 python -m bench probe_transports
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from opsq.core import aio
from opsq.core.config.probes import Target
from opsq.core.redis_server import free_port
from opsq.engines.probe import ProbeEngine

N = int(os.environ.get("OPSQ_BENCH_N", "3000"))
CONCURRENCY = 128
ROUNDS = 3  # best of, to damp noise from other processes on a shared 2-core machine

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
    uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

AIOHTTP_SERVER = """
import sys
from aiohttp import web
async def ok(request):
    return web.Response(text="ok\\n")
app = web.Application()
app.router.add_get("/{tail:.*}", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, backlog=4096)
"""


def _nginx() -> str | None:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx-light"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        found = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
    return found


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return
        time.sleep(0.05)
    raise RuntimeError("server did not start listening")


@contextlib.contextmanager
def local_server() -> Iterator[tuple[str, str]]:
    """Yield (base URL, server description)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="opsq-bench-") as tmp:
        nginx = _nginx()
        if nginx:
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=tmp, port=port))
            cmd, what = [nginx, "-c", str(conf), "-e", f"{tmp}/error.log"], "nginx-light"
        else:
            cmd, what = (
                [sys.executable, "-c", textwrap.dedent(AIOHTTP_SERVER), str(port)],
                "aiohttp",
            )
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_listening(port, proc)
            yield f"http://127.0.0.1:{port}", what
        finally:
            proc.terminate()
            proc.wait(10)


def bench_targets(base: str, count: int) -> list[Target]:
    """*count* distinct URLs on the local server (shared with bench/probes.py)."""
    return [
        Target.model_validate({"name": f"t{i}", "url": f"{base}/ok?i={i}", "timeout": 10})
        for i in range(count)
    ]


async def _engine_run(targets: list[Target], transport: str) -> int:
    async with ProbeEngine(
        concurrency=CONCURRENCY,
        per_host_concurrency=CONCURRENCY,
        transport=transport,  # type: ignore[arg-type]
    ) as engine:
        results = await engine.probe_many(targets)
    return sum(not r.up for r in results)


async def _raw_aiohttp_run(targets: list[Target]) -> int:
    sem = asyncio.Semaphore(CONCURRENCY)
    failures = 0
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(url: str) -> None:
            nonlocal failures
            async with sem:
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        failures += resp.status != 200
                except aiohttp.ClientError:
                    failures += 1

        await asyncio.gather(*(one(t.url) for t in targets))
    return failures


CASES = {
    "httpx": ("engine, httpx default transport", lambda ts: _engine_run(ts, "httpx")),
    "aiohttp": ("engine, httpx over aiohttp (default)", lambda ts: _engine_run(ts, "aiohttp")),
    "raw": ("raw aiohttp, no engine (ceiling)", _raw_aiohttp_run),
}


def _measure(targets: list[Target]) -> dict[str, tuple[float, float, int]]:
    """Best (probes/s, CPU us/probe, failures) per case; rounds interleave the cases so
    load from other processes on a shared machine hits every case alike."""
    best: dict[str, tuple[float, float, int]] = {}
    for _ in range(ROUNDS):
        for name, (_, run) in CASES.items():
            wall, cpu = time.perf_counter(), time.process_time()
            failed = aio.run(run(targets))  # uvloop + relaxed GC, as the engine runs
            rate = len(targets) / (time.perf_counter() - wall)
            cpu_us = (time.process_time() - cpu) / len(targets) * 1e6
            old = best.get(name, (0.0, float("inf"), 0))
            best[name] = (max(old[0], rate), min(old[1], cpu_us), max(old[2], failed))
    return best


def main() -> int:
    with local_server() as (base, what):
        targets = bench_targets(base, N)
        print(f"{N} probes per run, fresh connection each, concurrency {CONCURRENCY}, "
              f"best of {ROUNDS} interleaved rounds, server: {what} on {base}")  # fmt: skip
        best = _measure(targets)
    print(f"{'':<40} {'probes/s':>9} {'client CPU us/probe':>20}")
    for name, (label, _) in CASES.items():
        rate, cpu_us, failed = best[name]
        note = f"  ({failed} failed)" if failed else ""
        print(f"{label:<40} {rate:>9,.0f} {cpu_us:>20,.0f}{note}")
    aio, hx, raw = best["aiohttp"], best["httpx"], best["raw"]
    print(f"aiohttp transport vs httpx transport: {aio[0] / hx[0]:.2f}x probes/s, "
          f"{hx[1] / aio[1]:.2f}x less CPU per probe")  # fmt: skip
    print(f"engine (aiohttp) vs raw aiohttp:      {aio[0] / raw[0]:.2f}x probes/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
