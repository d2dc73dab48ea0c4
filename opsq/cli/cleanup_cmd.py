"""``opsq cleanup`` (one-shot), ``opsq cleanup rbac|audit`` and ``opsq watch`` (informer).

Thin: parse flags, build settings, call producers and engines, print. Dry-run is the
default everywhere; ``--apply`` (or ``cleanup.dry_run: false``) deletes for real.

Exit codes (each with one line on stderr, never a traceback):
0 done; 1 some objects failed (errors[] in the report); 2 bad config (file, field,
fix); 3 cannot reach the API server, Redis or a worker consuming ``cleanup``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
import redis
import yaml
from celery import Celery

from opsq.cli.options import common_options, positive_seconds, settings_from
from opsq.core.config.cleanup import CleanupSettings
from opsq.core.durations import format_duration, parse_duration
from opsq.core.errors import PermanentError, RedisUnavailable
from opsq.core.logsetup import setup_logging
from opsq.core.observe import ObserveServer
from opsq.core.settings import Settings
from opsq.engines.alerts import Message, send_via
from opsq.engines.cleanup import audit, planner, rbac
from opsq.engines.cleanup.executor import Executor, Target
from opsq.engines.cleanup.kube import ApiUnavailable, Kube, Unauthorized
from opsq.engines.cleanup.notify import EventNotifier
from opsq.engines.cleanup.owners import OwnerResolver
from opsq.engines.cleanup.planner import Guards
from opsq.engines.cleanup.ratelimit import LocalRateLimiter
from opsq.engines.cleanup.usage import LiveUsage, namespace_lister
from opsq.engines.cleanup.watcher import Watcher
from producers.cleanup import (
    NOT_ATTEMPTED,
    NoWorkers,
    Report,
    celery_executor,
    local_executor,
    notify_relay,
    run_once,
)
from producers.probes import close_producer_app, producer_app
from producers.watch import NoClaims, RedisClaims, WatchProducer, celery_sender, log_outcome

log = logging.getLogger(__name__)
EXIT_FAILED, EXIT_UNREACHABLE = 1, 3


def _cluster_options(func: Any) -> Any:
    func = click.option(
        "--kubeconfig",
        default=None,
        help="Kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config).",
    )(func)
    func = click.option("--context", "kube_context", default=None, help="Kubeconfig context.")(func)
    apply_help = "Delete for real (default: server-side dry run)."
    return click.option("--apply", is_flag=True, help=apply_help)(func)


def _load(opts: dict[str, Any]) -> tuple[Settings, CleanupSettings, Kube]:
    kubeconfig, context = opts.pop("kubeconfig", None), opts.pop("kube_context", None)
    settings = settings_from(**opts)
    cfg = settings.cleanup
    update = {k: v for k, v in {"kubeconfig": kubeconfig, "context": context}.items() if v}
    cfg = cfg.model_copy(update=update)
    setup_logging(settings.log_level, settings.log_format)
    # urllib3 logs each connect retry with its exception's repr; ours say it in one line.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    kube = Kube.connect(cfg.kubeconfig, cfg.context, request_timeout=cfg.request_timeout)
    return settings, cfg, kube


@contextmanager
def _exit_codes() -> Iterator[None]:
    """Unreachable API server, Redis or workers: one line and exit 3."""
    try:
        yield
    except ApiUnavailable as exc:
        _fail(
            f"{exc} (fix: check --kubeconfig/--context and that the API server is up; "
            "nothing was deleted)"
        )
    except Unauthorized as exc:
        _fail(str(exc))
    except RedisUnavailable as exc:
        _fail(f"{exc} (fix: start Redis or point --redis-url/OPSQ_REDIS_URL at it)")
    except NoWorkers as exc:
        _fail(str(exc))


def _fail(message: str, code: int = EXIT_UNREACHABLE) -> None:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


def _redis(settings: Settings) -> redis.Redis[bytes]:
    return redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)


def _audit(cfg: CleanupSettings, client: redis.Redis[bytes], program: str) -> audit.RedisAudit:
    trail = audit.RedisAudit(client, retention=cfg.audit_retention, actor=audit.identity(program))
    try:
        trail.ping()
    except RedisUnavailable as exc:
        raise RedisUnavailable(
            f"{exc}; the audit trail needs it (or set cleanup.audit: false)"
        ) from exc
    return trail


def _local_executor(
    cfg: CleanupSettings,
    kube: Kube,
    *,
    trail: audit.RedisAudit | None,
    stop: threading.Event | None = None,
) -> Executor:
    sleep: Callable[[float], Any] = stop.wait if stop is not None else time.sleep
    limiter = LocalRateLimiter(cfg.delete_rate, sleep=sleep)
    guards = Guards(OwnerResolver(kube), LiveUsage(namespace_lister(kube, cfg.page_size)))
    return Executor(kube, cfg, guards=guards, limiter=limiter, audit=trail, stop=stop)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP during `opsq cleanup` (a CI timeout, a closed terminal, a pod
    stopped): unwinds like Ctrl-C, so the tasks already queued are cancelled."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _terminate_like_ctrl_c() -> Iterator[None]:
    def on_signal(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    signals = (signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.group(invoke_without_command=True)
@common_options
@_cluster_options
@click.option("--local", is_flag=True, help="Delete in this process instead of via workers.")
@click.option("--output", type=click.Choice(["table", "json"]), default="table")
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=600.0,
    show_default=True,
    callback=positive_seconds,
    help="Seconds to wait for workers' outcomes; then queued tasks are cancelled.",
)
@click.pass_context
def cleanup(
    ctx: click.Context, /, apply: bool, local: bool, output: str, wait_s: float, **opts: Any
) -> None:
    """Plan and run the Kubernetes cleanup once (dry run unless --apply)."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        with _exit_codes(), _terminate_like_ctrl_c():
            report = _run_cleanup(apply, local, output, wait_s, opts)
    except Terminated as exc:
        name = signal.Signals(exc.signum).name
        click.echo(f"error: stopped by {name}; nothing more will be deleted", err=True)
        ctx.exit(128 + exc.signum)
    if output == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_summary(report)
    left = sum(1 for e in report.errors if e.reason == NOT_ATTEMPTED)
    if left:
        _fail(
            f"the API server stopped answering: {left} object(s) not attempted (fix: check "
            "that it is up, then run again; what was done is listed above)"
        )
    if report.errors:
        ctx.exit(EXIT_FAILED)


def _run_cleanup(
    apply: bool, local: bool, output: str, wait_s: float, opts: dict[str, Any]
) -> Report:
    settings, cfg, kube = _load(opts)
    dry_run = cfg.dry_run and not apply
    client = None if local and (dry_run or not cfg.audit) else _redis(settings)
    app = None if local else producer_app(settings)
    try:
        if app is None:
            trail = _audit(cfg, client, "opsq cleanup") if client is not None else None
            execute = local_executor(_local_executor(cfg, kube, trail=trail))
        else:
            assert client is not None
            execute = celery_executor(
                app, client, timeout=wait_s, announce=lambda text: click.echo(text, err=True)
            )
        on_plan = _print_plan if output == "table" else None
        return run_once(
            cfg, kube, execute, dry_run=dry_run, now=time.time(),
            judged_by=audit.identity("opsq cleanup"), on_plan=on_plan,
            notify=_notifier(settings, kube, app).announce,
        )  # fmt: skip
    finally:
        kube.close()
        if client is not None:
            client.close()
        if app is not None:
            close_producer_app(app)


def _notifier(settings: Settings, kube: Kube, app: Celery | None) -> EventNotifier:
    """Heads-ups: the Event, plus notifiers in process (--local) or via ``opsq.notify``."""

    def in_process(name: str, message: Message) -> None:
        send_via(settings.alerts, name, message)

    relay = in_process if app is None else notify_relay(app)
    return EventNotifier(kube, clock=time.time, settings=settings.cleanup, relay=relay)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f}d"
    return format_duration(seconds)


def _print_plan(report: Report) -> None:
    """The plan at once, before anything is sent (workers may take a while)."""
    mode = "dry run, server-side dryRun=All; --apply deletes" if report.dry_run else "apply"
    shown = [i for i in report.plan if i.action == "delete" or i.reason not in planner.QUIET]
    rows = [
        (i.action, i.rule, i.resource, f"{i.namespace}/{i.name}" if i.namespace else i.name,
         _age(i.age), i.reason)
        for i in shown
    ]  # fmt: skip
    header = ("ACTION", "RULE", "RESOURCE", "NAMESPACE/NAME", "AGE", "REASON")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    click.echo(f"plan ({mode}):")
    for row in [header, *rows]:
        cells = [
            v.rjust(w) if c == 4 else v.ljust(w)
            for c, (v, w) in enumerate(zip(row, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())
    hidden = len(report.plan) - len(shown)
    if hidden:
        click.echo(
            f"({hidden} object(s) not due or not matching are not shown; --output json lists them)"
        )


def _print_summary(report: Report) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    click.echo(
        f"\n{verb}: {len(report.deleted)}  skipped: {len(report.skipped)}  "
        f"errors: {len(report.errors)}  (planned deletions: {len(report.planned)})"
    )
    for error in report.errors:
        if error.reason == NOT_ATTEMPTED:
            continue  # one line for all of them follows
        where = f"{error.namespace}/{error.name}" if error.name else error.namespace or "-"
        click.echo(f"error: {error.rule} {where}: {error.message or error.reason}", err=True)


@cleanup.command("rbac")
@common_options
@click.option("--namespace", default="default", help="Namespace of the service account.")
@click.option("--service-account", default="opsq", help="Service account to bind.")
@click.option(
    "--namespaced",
    is_flag=True,
    help="Roles in each namespace the rules name; a ClusterRole only for what needs one.",
)
@click.option("--role-namespace", default=None, hidden=True, help="Deprecated: --namespaced.")
def rbac_cmd(
    namespace: str, service_account: str, namespaced: bool, role_namespace: str | None, **opts: Any
) -> None:
    """Print the least-privilege RBAC (ClusterRole, or Roles with --namespaced)."""
    cfg = settings_from(**opts).cleanup
    if role_namespace is not None:
        click.echo("warning: --role-namespace is deprecated; using --namespaced", err=True)
        namespaced = True
    docs = rbac.manifests(
        cfg, service_account=service_account, namespace=namespace, namespaced=namespaced
    )
    click.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)


@cleanup.command("audit")
@common_options
@click.option("--since", default="24h", show_default=True, help="How far back (e.g. 1h, 7d).")
@click.option("--output", type=click.Choice(["table", "json"]), default="table")
def audit_cmd(since: str, output: str, **opts: Any) -> None:
    """Print the audit trail of real deletions (stream opsq:cleanup:audit)."""
    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    settings = settings_from(**opts)
    client = _redis(settings)
    try:
        with _exit_codes():
            entries = audit.read(client, since=seconds, now=time.time())
    finally:
        client.close()
    if output == "json":
        click.echo(json.dumps(entries, indent=2))
        return
    for entry in entries:
        click.echo(_audit_line(entry))
    click.echo(f"{len(entries)} deletion(s) in the last {since}", err=True)


def _audit_line(entry: dict[str, str]) -> str:
    """One entry as a line; fields an entry lacks (another writer's, or a future
    version's) print as ``-`` instead of ending the listing with a KeyError."""
    field = {k: entry.get(k) or "-" for k in audit.FIELDS}
    try:
        when = planner.format_time(float(entry.get("deleted_at") or ""))
    except (ValueError, OverflowError, OSError):
        when = field["deleted_at"]
    name = f"{entry['namespace']}/{field['name']}" if entry.get("namespace") else field["name"]
    return (
        f"{when}  {field['rule']}  {field['resource']}  {name}  uid={field['uid']}  "
        f"reason={field['reason']}  judged_by={field['judged_by']}  "
        f"deleted_by={field['deleted_by']}"
    )


@click.command()
@common_options
@_cluster_options
@click.option("--local", is_flag=True, help="Delete in this process instead of via workers.")
def watch(apply: bool, local: bool, **opts: Any) -> None:
    """Run the informer: delete objects as they become due (dry run unless --apply)."""
    stop = threading.Event()
    settings, cfg, kube = _load(opts)
    _handle_signals(stop, cfg.shutdown_grace)
    dry_run = cfg.dry_run and not apply
    watcher = Watcher(cfg, kube, judged_by=audit.identity("opsq watch"))
    checks: dict[str, Any] = {"cache_synced": lambda: watcher.synced}
    client = _redis(settings) if not local or (cfg.audit and not dry_run) else None
    app = None if local else producer_app(settings)
    notifier = _notifier(settings, kube, app)
    try:
        with _exit_codes():
            producer = _watch_producer(
                cfg, kube, watcher=watcher, client=client, app=app, dry_run=dry_run, stop=stop
            )
        producer.notify = notifier.announce
        if client is not None:
            checks["redis"] = client.ping
        checks["informers_alive"] = producer.informers_alive
        port = settings.metrics.port if cfg.metrics_port is None else cfg.metrics_port
        observe = ObserveServer(settings.metrics.bind, port, ready_checks=checks).start()
        click.echo(
            f"watching with {len(watcher.all_informers)} informer(s), metrics on port "
            f"{observe.port}, dry_run={dry_run}",
            err=True,
        )
        try:
            producer.run(stop)
        except Unauthorized as exc:
            _fail(str(exc))
        except PermanentError as exc:
            _fail(str(exc), EXIT_FAILED)
        finally:
            observe.stop()
    finally:
        kube.close()
        if client is not None:
            client.close()
        if app is not None:
            close_producer_app(app)


def _watch_producer(
    cfg: CleanupSettings,
    kube: Kube,
    *,
    watcher: Watcher,
    client: redis.Redis[bytes] | None,
    app: Celery | None,
    dry_run: bool,
    stop: threading.Event,
) -> WatchProducer:
    if app is None:
        trail = _audit(cfg, client, "opsq watch") if client is not None else None
        executor = _local_executor(cfg, kube, trail=trail, stop=stop)

        def send(target: Target, _countdown: float) -> None:
            log_outcome(
                executor.execute(target, dry_run=dry_run, proceed=lambda: not stop.is_set())
            )

        return WatchProducer(cfg, watcher, send, NoClaims(), ahead=0.0, dry_run=dry_run, stop=stop)
    assert client is not None
    sender = celery_sender(app, dry_run=dry_run)
    return WatchProducer(cfg, watcher, sender, RedisClaims(client), dry_run=dry_run, stop=stop)


def _handle_signals(stop: threading.Event, grace: float) -> None:
    """First SIGTERM/SIGINT: stop taking work and exit within *grace* (a watchdog ends
    the process if a request is stuck); a second one: exit at once."""

    def overdue() -> None:
        log.error("did not stop within shutdown_grace (%.0fs); exiting anyway", grace)
        os._exit(EXIT_FAILED)

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()
        timer = threading.Timer(grace, overdue)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
