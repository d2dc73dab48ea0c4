"""``opsq up``: every opsq component on this machine, under one supervisor.

What starts, in order: an embedded valkey-server when no Redis URL is configured (AOF
on, ``noeviction``, data in ``<data_dir>/redis``); the demo endpoints with ``--demo``;
Celery workers; beat (RedBeat); Flower behind basic auth; and the log agent, shipper
and cleanup watcher when the config gives them something to do. Each runs by its own
command (``celery -A tasks worker`` ...) as a child process, so ``opsq up`` is exactly
what a production deployment runs, only supervised by :mod:`opsq.cli.supervisor`
instead of Kubernetes.

Flower shows task arguments and can revoke tasks or shut workers down (its API is how
CVE-2022-30034 was exploited), so it gets a password unless ``--insecure-flower`` says
otherwise; the password goes to Flower through ``FLOWER_BASIC_AUTH`` in its environment,
never on its command line where ``ps`` would show it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from opsq.cli.demo_receiver import DemoReceiver
from opsq.cli.invocation import followup_lines
from opsq.cli.options import common_options, settings_from
from opsq.cli.supervisor import SESSION_ENV, Child, Managed, PidFile, RedisChild, Supervisor
from opsq.cli.supervisor import exclusive as exclusive_data_dir
from opsq.core.errors import OpsqError
from opsq.core.logsetup import setup_logging
from opsq.core.observe import ObserveServer
from opsq.core.redact import redact_url
from opsq.core.redis_memory import MemoryWatch
from opsq.core.redis_server import RedisServer, free_port
from opsq.core.settings import Settings

log = logging.getLogger("opsq.up")

DEMO_SET = "demo"
DEMO_INTERVAL_S = 10
STOP_PHASE_WORK = 0
"""Workers, agent, shipper, watcher: finish or hand back in-flight work first."""
DEFAULT_REDIS_PORT = 6379

STOP_PHASE_SERVICES = 1
"""Beat, Flower and the demo endpoints: after the work they schedule, show or serve."""


@dataclass
class UpOptions:
    demo: bool = False
    workers: int = 1
    concurrency: int = 2
    redis_port: int | None = None
    """None: 6379 when free, else any free port (a laptop may already run Redis)."""
    metrics_port: int | None = None
    flower_port: int | None = None
    insecure_flower: bool = False
    web_port: int | None = None
    """None: web.port when free, else any free port."""
    stop_timeout: float = 30.0


@dataclass
class Plan:
    """What ``opsq up`` will run and what it tells the user."""

    children: list[Managed] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    metrics_urls: dict[str, str] = field(default_factory=dict)
    worker_ready_url: str | None = None
    flower_url: str = ""
    flower_auth: tuple[str, str] | None = None
    web_url: str = ""
    demo_hook_url: str = ""
    """The demo webhook receiver (a thread of `opsq up`) that prints what it gets."""


class Ports:
    """Hand out ports from a base, skipping busy ones; base 0 means any free port."""

    def __init__(self, base: int, bind: str = "127.0.0.1") -> None:
        self.next = base
        self.bind = bind
        self.taken: set[int] = set()

    def take(self) -> int:
        if self.next == 0:
            port = free_port()
            while port in self.taken:
                port = free_port()
        else:
            while self.next in self.taken or not _port_free(self.bind, self.next):
                self.next += 1
            port = self.next
            self.next += 1
        self.taken.add(port)
        return port


def _port_free(bind: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((bind, port))
        except OSError:
            return False
    return True


def python_argv(module: str) -> list[str]:
    """Run *module* with this interpreter (the venv's, or the zipapp's)."""
    return [sys.executable, "-m", module]


@dataclass
class Builder:
    """Turns settings and options into the children to run."""

    settings: Settings
    options: UpOptions
    data_dir: Path
    redis_url: str
    session: str
    config_file: str | None
    plan: Plan = field(default_factory=Plan)

    def __post_init__(self) -> None:
        base = self.settings.metrics.port if self.options.metrics_port is None else (
            self.options.metrics_port
        )  # fmt: skip
        self.ports = Ports(base, self.settings.metrics.bind)

    def env(self, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update({
            "OPSQ_REDIS_URL": self.redis_url,
            "OPSQ_LOG_LEVEL": self.settings.log_level,
            "OPSQ_LOG_FORMAT": self.settings.log_format,
            # One data dir per child: a worker wipes its metrics dir at start.
            "OPSQ_DATA_DIR": str(self.data_dir / name),
            SESSION_ENV: self.session,
            "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        if self.config_file:
            env["OPSQ_CONFIG"] = str(Path(self.config_file).resolve())
        if self.options.demo:
            env["OPSQ_PROBES__SETS__DEMO__FILE"] = str(self.data_dir / "demo-targets.yaml")
            env["OPSQ_PROBES__SETS__DEMO__INTERVAL"] = str(DEMO_INTERVAL_S)
            # The alert demo: one transition fires or resolves it, so it shows within a run.
            env["OPSQ_PROBES__SETS__DEMO__FAILURE_THRESHOLD"] = "1"
            env["OPSQ_PROBES__SETS__DEMO__SUCCESS_THRESHOLD"] = "1"
            env["OPSQ_ALERTS__NOTIFIERS__DEMO__KIND"] = "webhook"
            env["OPSQ_ALERTS__NOTIFIERS__DEMO__URL"] = self.plan.demo_hook_url
        env.update(extra or {})
        return env

    def child(
        self, name: str, argv: list[str], phase: int, extra: dict[str, str] | None = None
    ) -> Child:
        child = Child(
            name=name, argv=argv, env=self.env(name, extra),
            log_path=self.data_dir / "logs" / f"{name}.log", phase=phase,
        )  # fmt: skip
        self.plan.children.append(child)
        return child

    def metrics_child(
        self, name: str, argv: list[str], port_env: str, phase: int = STOP_PHASE_WORK
    ) -> int:
        """A child serving /metrics on a port of its own, announced in the banner."""
        port = self.ports.take()
        self.child(name, argv, phase, {port_env: str(port)})
        url = f"http://{_host(self.settings.metrics.bind)}:{port}"
        self.plan.metrics_urls[name] = f"{url}/metrics"
        self.plan.lines.append(f"  {name:<10} {url}/metrics  (/healthz /readyz /debug/stacks)")
        return port

    def celery(self, *args: str) -> list[str]:
        return [*python_argv("celery"), "-A", "tasks", *args]

    def add_workers(self) -> None:
        level = self.settings.log_level
        for index in range(1, self.options.workers + 1):
            argv = self.celery(
                "worker", "--loglevel", level, "--concurrency", str(self.options.concurrency),
                "--hostname", f"worker{index}@%h", "--without-gossip", "--without-mingle",
            )  # fmt: skip
            port = self.metrics_child(f"worker-{index}", argv, "OPSQ_METRICS__PORT")
            if self.plan.worker_ready_url is None:
                self.plan.worker_ready_url = f"http://{_host(self.settings.metrics.bind)}:{port}"

    def add_beat(self) -> None:
        argv = self.celery("beat", "--loglevel", self.settings.log_level,
                           "-S", "tasks.beat.LockedRedBeatScheduler")  # fmt: skip
        self.metrics_child("beat", argv, "OPSQ_METRICS__PORT", STOP_PHASE_SERVICES)

    def add_flower(self) -> None:
        port = self.options.flower_port
        if port is None:
            port = self.settings.flower.port
        port = port or free_port()
        argv = self.celery("flower", f"--port={port}", "--address=127.0.0.1")
        extra: dict[str, str] = {}
        url = f"http://127.0.0.1:{port}"
        self.plan.flower_url = url
        if self.options.insecure_flower:
            note = "NO AUTHENTICATION (--insecure-flower): anyone here can revoke tasks"
        else:
            user, password, generated = self.flower_credentials()
            extra["FLOWER_BASIC_AUTH"] = f"{user}:{password}"
            self.plan.flower_auth = (user, password)
            note = (
                f"user {user!r}, password {password} (generated; shown only now)"
                if generated
                else f"user {user!r}, password from flower.password"
            )
        self.child("flower", argv, STOP_PHASE_SERVICES, extra)
        self.plan.lines.append(f"  flower     {url}  {note}")

    def flower_credentials(self) -> tuple[str, str, bool]:
        configured = self.settings.flower.password
        if configured is not None and configured.get_secret_value():
            password = configured.get_secret_value()
            if "," in password:
                raise OpsqError("flower.password must not contain ',' (Flower splits on it)")
            return self.settings.flower.user, password, False
        return self.settings.flower.user, secrets.token_urlsafe(18), True

    def add_web(self) -> None:
        """The status page (`opsq web`), private unless web.public, like Flower: the
        password reaches it through its environment, never its command line."""
        web = self.settings.web
        port = web.port if self.options.web_port is None else self.options.web_port
        if port == 0 or (self.options.web_port is None and not _port_free(web.bind, port)):
            port = free_port()
        extra = {"OPSQ_WEB__PORT": str(port), "OPSQ_WEB__BIND": web.bind}
        if web.public:
            note = "public, read-only (web.public)"
        else:
            configured = web.password.get_secret_value() if web.password else ""
            password = configured or secrets.token_urlsafe(18)
            extra["OPSQ_WEB__PASSWORD"] = password
            note = f"user {web.user!r}, " + (
                "password from web.password"
                if configured
                else f"password {password} (generated; shown only now)"
            )
        self.plan.web_url = f"http://{_host(web.bind)}:{port}/"
        self.child("web", [*python_argv("opsq"), "web"], STOP_PHASE_SERVICES, extra)
        self.plan.lines.append(f"  web        {self.plan.web_url}  status page, {note}")

    def add_optional(self) -> None:
        """Agent, shipper and watcher run only when the config gives them work."""
        logs = self.settings.logs
        if logs.agent.paths:
            self.metrics_child("agent", [*python_argv("opsq"), "agent"],
                               "OPSQ_LOGS__AGENT__METRICS_PORT")  # fmt: skip
            self.metrics_child("shipper", [*python_argv("opsq"), "ship"],
                               "OPSQ_LOGS__SHIPPER__METRICS_PORT")  # fmt: skip
        if self.settings.cleanup.rules:
            self.metrics_child("watcher", [*python_argv("opsq"), "watch"],
                               "OPSQ_CLEANUP__METRICS_PORT")  # fmt: skip

    def add_demo(self) -> None:
        from opsq.cli.demo import render_targets  # noqa: PLC0415 - aiohttp only with --demo

        port = free_port()
        render_targets(
            self.data_dir / "demo-targets.yaml",
            demo_address=f"127.0.0.1:{port}", closed_port=free_port(),
        )  # fmt: skip
        argv = [*python_argv("opsq.cli.demo"), "--port", str(port)]
        self.plan.demo_hook_url = f"http://127.0.0.1:{self.ports.take()}/hook"
        self.child("demo", argv, STOP_PHASE_SERVICES)
        self.plan.lines.append(
            f"  demo       http://127.0.0.1:{port}/  (healthy, slow, flaky, failing), "
            f"probe set {DEMO_SET!r} every {DEMO_INTERVAL_S}s"
        )
        self.plan.lines.append(
            f"  alerts     {self.plan.demo_hook_url}  (webhook receiver: prints the 'toggle' "
            "target's alert firing and resolving below)"
        )

    def build(self) -> Plan:
        if self.options.demo:
            self.add_demo()
        self.add_workers()
        self.add_beat()
        self.add_flower()
        self.add_web()
        self.add_optional()
        return self.plan


def _host(bind: str) -> str:
    return "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind  # noqa: S104 - display only


def embedded_redis(data_dir: Path, port: int | None) -> RedisServer:
    if port is None:
        # The conventional port when free, so `opsq runs list` finds it with no setup;
        # else any free one (the banner says how to reach it) rather than failing.
        port = DEFAULT_REDIS_PORT if _port_free("127.0.0.1", DEFAULT_REDIS_PORT) else 0
    elif port and not _port_free("127.0.0.1", port):
        raise OpsqError(
            f"port {port} is in use (another Redis?): pass --redis-port 0 for any free "
            "port, or --redis-url to use that server"
        )
    return RedisServer(data_dir / "redis", port=port or None, appendonly=True, tie_to_parent=True)


def wait_http_ok(url: str, timeout: float, stop: threading.Event) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own URL
                if response.status == 200:
                    return True
        except (OSError, urllib.error.URLError):
            pass
        stop.wait(0.5)
    return False


def kick_demo(settings: Settings, redis_url: str, ready_url: str, stop: threading.Event) -> None:
    """Run the demo set once as soon as a worker is ready (beat's first tick is later)."""
    if not wait_http_ok(f"{ready_url}/readyz", 120, stop):
        return
    from opsq.core import signatures  # noqa: PLC0415 - only needed here
    from producers.probes import close_producer_app, producer_app  # noqa: PLC0415

    app = producer_app(settings.model_copy(update={"redis_url": redis_url}))
    try:
        app.send_task(signatures.PROBE_SET, kwargs={"name": DEMO_SET})
        click.echo("demo: first run of the demo probe set queued (then every "
                   f"{DEMO_INTERVAL_S}s); see `runs list` above")  # fmt: skip
    except Exception:
        # A thread's uncaught traceback goes to stderr unredacted (kombu errors can
        # carry the broker URL); beat's first tick runs the set anyway.
        log.warning("demo: could not queue the first run; beat will run it", exc_info=True)
    finally:
        close_producer_app(app)


def _demo_receiver(plan: Plan) -> DemoReceiver:
    """Serve the demo's webhook on the port the plan announced; print what arrives."""
    port = int(plan.demo_hook_url.rsplit(":", 1)[1].split("/", 1)[0])
    return DemoReceiver(click.echo, port).start()


def banner(
    plan: Plan, redis_line: str, data_dir: Path, options: UpOptions, followup: list[str]
) -> str:
    lines = [
        f"opsq up: Ctrl-C or SIGTERM stops everything (within {options.stop_timeout:.0f}s).",
        redis_line,
        *plan.lines,
        f"  logs       {data_dir / 'logs'}/<name>.log",
        "Within a minute you will see results, retries and failures; from another shell:"
        if options.demo
        else "Runs, from another shell:",
        *followup,
    ]
    if options.demo:
        lines.append(f"  Flower: {plan.flower_url}/tasks  (opsq.probe_set, opsq.probe_batch)")
        lines.append(f"  Status page: {plan.web_url}  (states, uptime, latency, incidents)")
    return "\n".join(lines)


def _redis_for(
    settings: Settings, data_dir: Path, options: UpOptions
) -> tuple[str, str, list[Managed], str | None]:
    """The Redis URL to hand every child, its banner line, the embedded server to
    supervise (none when a Redis URL is configured) and the URL other shells must
    export (the embedded server off the port `opsq` looks at by default)."""
    if settings.redis_url:
        line = f"  redis      {redact_url(settings.redis_url)} (configured)"
        return settings.redis_url, line, [], None
    server = embedded_redis(data_dir, options.redis_port)
    redis_url = server.url
    redis_line = (f"  redis      {redact_url(redis_url)} (embedded valkey-server, "
                  f"AOF in {server.data_dir}, noeviction)")  # fmt: skip
    export = redact_url(redis_url) if server.port != DEFAULT_REDIS_PORT else None
    return redis_url, redis_line, [RedisChild(server)], export


def run_up(settings: Settings, options: UpOptions, config_file: str | None) -> None:
    # Supervisor events (exits, restarts, kills) as log lines: JSON with --log-format json.
    setup_logging(settings.log_level, settings.log_format)
    data_dir = settings.data_dir.resolve()
    with exclusive_data_dir(data_dir):
        session = secrets.token_hex(8)
        pidfile = PidFile(data_dir / "up.pids", session)
        reaped = pidfile.reap_stale()
        if reaped:
            click.echo(f"reaped {len(reaped)} process group(s) left by a crashed `opsq up`")
        redis_url, redis_line, children, export = _redis_for(settings, data_dir, options)
        builder = Builder(settings, options, data_dir, redis_url, session, config_file)
        plan = builder.build()
        supervisor = Supervisor(
            children + plan.children, stop_timeout=options.stop_timeout,
            notify=log.warning, pidfile=pidfile,
        )  # fmt: skip
        supervisor.install_signal_handlers()
        memory = MemoryWatch(redis_url)
        observe = ObserveServer(
            settings.metrics.bind, builder.ports.take(),
            ready_checks={"children": supervisor.all_running},
            reports={"redis_memory": memory.report},
        ).start()  # fmt: skip
        plan.lines.append(
            f"  supervisor http://{_host(settings.metrics.bind)}:{observe.port}/metrics  "
            "(opsq_up_child_up, opsq_up_child_restarts_total; /readyz: all children up)"
        )
        stop = threading.Event()
        receiver = _demo_receiver(plan) if options.demo else None
        try:
            supervisor.start_all()
            memory.start()  # warns past 80% of maxmemory (noeviction: then writes fail)
            followup = followup_lines(export, config_file)
            click.echo(banner(plan, redis_line, data_dir, options, followup))
            if options.demo and plan.worker_ready_url:
                threading.Thread(
                    target=kick_demo, args=(settings, redis_url, plan.worker_ready_url, stop),
                    name="demo-kick", daemon=True,
                ).start()  # fmt: skip
            supervisor.supervise()
        finally:
            stop.set()
            memory.stop()
            supervisor.stop_all()
            observe.stop()
            if receiver is not None:
                receiver.stop()
        click.echo("opsq up: stopped")


@click.command()
@common_options
@click.option("--demo", is_flag=True, help="Also serve demo endpoints and probe them.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 512), default=2, show_default=True,
              help="Pool processes per worker.")  # fmt: skip
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where Redis data, logs and pid files go (default: data_dir).")  # fmt: skip
@click.option("--redis-port", type=click.IntRange(0, 65535), default=None,
              help="Embedded Redis port when no URL is configured (default: 6379, or any "
                   "free port when 6379 is taken; 0: any free).")  # fmt: skip
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="First metrics port (default: metrics.port; 0: any free ports).")  # fmt: skip
@click.option("--flower-port", type=click.IntRange(0, 65535), default=None,
              help="Flower's port (default: flower.port; 0: any free).")  # fmt: skip
@click.option("--insecure-flower", is_flag=True, help="Run Flower without authentication.")
@click.option("--web-port", type=click.IntRange(0, 65535), default=None,
              help="The status page's port (default: web.port, or any free port when it "
                   "is taken; 0: any free).")  # fmt: skip
@click.option("--stop-timeout", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Seconds for a graceful stop before stragglers are killed.")  # fmt: skip
def up(config_file: str | None, redis_url: str | None, log_level: str | None,
       log_format: str | None, data_dir: Path | None, **flags: Any) -> None:  # fmt: skip
    """Start Redis (embedded), workers, beat, Flower and the rest on this machine."""
    overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir is not None else {}
    settings = settings_from(config_file, redis_url, log_level, log_format, **overrides)
    run_up(settings, UpOptions(**flags), config_file)
