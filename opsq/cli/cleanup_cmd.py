"""``opsq cleanup`` (one-shot), ``opsq cleanup rbac`` and ``opsq watch`` (informer).

Thin: parse flags, build settings, call producers and engines, print. Dry-run is the
default everywhere; ``--apply`` (or ``cleanup.dry_run: false``) deletes for real.
Exit codes: 0 done, 1 some objects failed (errors[] in the report), 2 bad config.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import click
import redis
import yaml

from opsq.cli.options import common_options, settings_from
from opsq.core.config.cleanup import CleanupSettings
from opsq.core.durations import format_duration
from opsq.core.logsetup import setup_logging
from opsq.core.observe import ObserveServer
from opsq.core.settings import Settings
from opsq.engines.cleanup import planner, rbac
from opsq.engines.cleanup.executor import Executor
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.owners import OwnerResolver
from opsq.engines.cleanup.ratelimit import LocalRateLimiter
from opsq.engines.cleanup.watcher import Watcher
from producers.cleanup import Report, celery_executor, local_executor, run_once
from producers.probes import producer_app
from producers.watch import NoClaims, RedisClaims, WatchProducer, celery_sender

_QUIET_REASONS = {planner.NOT_DUE_YET, planner.PHASE_MISMATCH}


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
    kube = Kube.connect(cfg.kubeconfig, cfg.context, request_timeout=cfg.request_timeout)
    return settings, cfg, kube


def _local_executor(cfg: CleanupSettings, kube: Kube) -> Executor:
    limiter = LocalRateLimiter(cfg.delete_rate)
    return Executor(kube, cfg, owners=OwnerResolver(kube), limiter=limiter)


@click.group(invoke_without_command=True)
@common_options
@_cluster_options
@click.option("--local", is_flag=True, help="Delete in this process instead of via workers.")
@click.option("--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--wait", "wait_s", type=float, default=600.0, help="Seconds to wait for workers.")
@click.pass_context
def cleanup(
    ctx: click.Context, /, apply: bool, local: bool, output: str, wait_s: float, **opts: Any
) -> None:
    """Plan and run the Kubernetes cleanup once (dry run unless --apply)."""
    if ctx.invoked_subcommand is not None:
        return
    settings, cfg, kube = _load(opts)
    dry_run = cfg.dry_run and not apply
    if local:
        execute = local_executor(_local_executor(cfg, kube))
    else:
        execute = celery_executor(producer_app(settings), timeout=wait_s)
    try:
        report = run_once(cfg, kube, execute, dry_run=dry_run, now=time.time())
    finally:
        kube.close()
    if output == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_table(report)
    if report.errors:
        ctx.exit(1)


def _print_table(report: Report) -> None:
    mode = "dry run, server-side dryRun=All; --apply deletes" if report.dry_run else "apply"
    click.echo(f"plan ({mode}):")
    click.echo(f"{'ACTION':7} {'RULE':20} {'RESOURCE':20} {'NAMESPACE/NAME':50} {'AGE':>7} REASON")
    for item in report.plan:
        if item.action == "skip" and (
            item.reason in _QUIET_REASONS or item.reason.startswith("not-")
        ):
            continue
        age = format_duration(item.age) if item.age is not None else "-"
        where = f"{item.namespace}/{item.name}"
        click.echo(
            f"{item.action:7} {item.rule:20} {item.resource:20} {where:50} {age:>7} {item.reason}"
        )
    verb = "would delete" if report.dry_run else "deleted"
    click.echo(
        f"\n{verb}: {len(report.deleted)}  skipped: {len(report.skipped)}  "
        f"errors: {len(report.errors)}  (planned deletions: {len(report.planned)})"
    )
    for error in report.errors:
        click.echo(
            f"error: {error['rule']} {error['namespace']}/{error['name']}: "
            f"{error.get('message') or error['reason']}",
            err=True,
        )


@cleanup.command("rbac")
@common_options
@click.option("--namespace", default="default", help="Namespace of the service account.")
@click.option("--service-account", default="opsq", help="Service account to bind.")
@click.option(
    "--role-namespace",
    default=None,
    help="Emit a Role limited to this namespace instead of a ClusterRole.",
)
def rbac_cmd(namespace: str, service_account: str, role_namespace: str | None, **opts: Any) -> None:
    """Print the least-privilege (Cluster)Role and binding for the configured rules."""
    cfg = settings_from(**opts).cleanup
    docs = rbac.manifests(
        cfg, service_account=service_account, namespace=namespace, scope_namespace=role_namespace
    )
    click.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)


@click.command()
@common_options
@_cluster_options
@click.option("--local", is_flag=True, help="Delete in this process instead of via workers.")
def watch(apply: bool, local: bool, **opts: Any) -> None:
    """Run the informer: delete objects as they become due (dry run unless --apply)."""
    settings, cfg, kube = _load(opts)
    dry_run = cfg.dry_run and not apply
    watcher = Watcher(cfg, kube)
    checks: dict[str, Any] = {"cache_synced": lambda: watcher.synced}
    client: redis.Redis[bytes] | None = None
    if local:
        executor = _local_executor(cfg, kube)
        producer = WatchProducer(
            cfg, watcher, lambda t, _c: _discard(executor.execute(t, dry_run=dry_run)), NoClaims(),
            ahead=0.0,
        )  # fmt: skip
    else:
        client = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
        checks["redis"] = client.ping
        sender = celery_sender(producer_app(settings), dry_run=dry_run)
        producer = WatchProducer(cfg, watcher, sender, RedisClaims(client))
    checks["informers_alive"] = producer.informers_alive
    port = settings.metrics.port if cfg.metrics_port is None else cfg.metrics_port
    observe = ObserveServer(settings.metrics.bind, port, ready_checks=checks).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    click.echo(
        f"watching with {len(watcher.informers)} informer(s), metrics on port {observe.port}, "
        f"dry_run={dry_run}",
        err=True,
    )
    try:
        producer.run(stop)
    finally:
        observe.stop()
        kube.close()
        if client is not None:
            client.close()


def _discard(_outcome: object) -> None:
    """In-process sends report through metrics and logs, not a return value."""
