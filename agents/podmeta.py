"""Pod metadata for log records: one node-local informer, no API call per line.

What a record says about its pod comes in two layers:

1. **The path** (:mod:`agents.podpath`): namespace, pod, container, pod uid, restart
   count. Always there, needs no API, and survives the pod's deletion.
2. **The API** (optional, ``kubernetes.metadata.enabled``): chosen labels and
   annotations and the owner, from the cleanup engine's list-then-watch
   :class:`~opsq.engines.cleanup.informer.Informer` restricted to this node's pods
   (``fieldSelector=spec.nodeName=<node>``, the same query the kubelet's own pod
   source makes). A node runs ~100 pods, so the cache is small, and every lookup is a
   dict access: the API sees one LIST and one WATCH per node, whatever the log volume.

Failure is never a reason to hold logs back. Until the first LIST completes, files of
pods wait at most ``sync_timeout`` (so that an opted-out pod is not read before we can
know it opted out); a 403 or an unreachable API server lets them go after that,
without labels, while the informer keeps retrying with backoff and every failure is
counted (``opsq_agent_metadata_errors_total{reason}``) and logged. A deleted pod's
metadata is kept for ``keep_deleted`` (its last lines are usually still being read);
after that its lines ship with the identity from their path.

The owner is the pod's controller reference; a ReplicaSet named
``<deployment>-<pod-template-hash>`` is reported as its Deployment (the naming the
Deployment controller uses), so no ReplicaSet lookup and no extra RBAC is needed.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from agents.podpath import PodIdentity
from agents.pods import Verdict
from opsq.core.config.cleanup import ResourceRef
from opsq.core.config.logs import KubernetesSettings
from opsq.core.errors import OpsqError
from opsq.core.metrics import logs_agent as metrics
from opsq.engines.cleanup.informer import Informer
from opsq.engines.cleanup.kube import Expired, Forbidden, Kube

log = logging.getLogger(__name__)
Obj = dict[str, Any]

PODS = ResourceRef(group="", version="v1", plural="pods")


class _CountedKube(Kube):
    """The informer's API access, counting and logging every failed LIST or WATCH."""

    def __init__(self, api_client: Any, on_error: Callable[[OpsqError], None]) -> None:
        super().__init__(api_client)
        self.on_error = on_error

    def list(self, *args: Any, **kwargs: Any) -> Obj:
        try:
            return super().list(*args, **kwargs)
        except OpsqError as exc:
            self.on_error(exc)
            raise

    def watch(self, *args: Any, **kwargs: Any) -> Iterator[Obj]:
        try:
            yield from super().watch(*args, **kwargs)
        except OpsqError as exc:
            self.on_error(exc)
            raise


def reason_of(exc: OpsqError) -> str:
    if isinstance(exc, Forbidden):
        return "forbidden"
    return "expired" if isinstance(exc, Expired) else "unavailable"


class PodMetadata:
    """This node's pods by uid, and what each log record should carry about them."""

    def __init__(
        self,
        settings: KubernetesSettings,
        node: str,
        api_client: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = settings.metadata
        self.node = node
        self.clock = clock
        self.kube = _CountedKube(api_client, self._failed)
        self.informer = Informer(
            self.kube, PODS, on_object=self._changed, on_gone=self._deleted,
            field_selector=f"spec.nodeName={node}", watch_timeout=self.cfg.watch_timeout,
        )  # fmt: skip
        self.version = 0
        """Bumped on every pod change: cached per-file metadata is rebuilt after one."""
        self.started = clock()
        self.failing: str | None = None
        self._gone: dict[str, tuple[float, Obj]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> PodMetadata:
        self._thread = threading.Thread(
            target=self.informer.run, args=(self._stop,), name="opsq-agent-pods", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the informer to stop; not waited for (a daemon thread blocked in a WATCH
        would hold up the agent's shutdown grace, and it holds nothing to flush)."""
        self._stop.set()
        self.kube.close()

    @property
    def synced(self) -> bool:
        return self.informer.synced

    # --- informer callbacks -----------------------------------------------------------
    def _changed(self, _obj: Obj) -> None:
        self.version += 1
        if self.failing is not None:
            log.info("pod metadata: the API answers again; labels are back")
            self.failing = None
        metrics.METADATA_SYNCED.set(1)

    def _deleted(self, obj: Obj) -> None:
        uid = str((obj.get("metadata") or {}).get("uid", ""))
        with self._lock:
            for key in {uid, _mirror_of(obj)} - {""}:
                self._gone[key] = (self.clock() + self.cfg.keep_deleted, obj)
        self.version += 1

    def _failed(self, exc: OpsqError) -> None:
        reason = reason_of(exc)
        metrics.METADATA_ERRORS.labels(reason=reason).inc()
        if reason == "expired":
            return  # the informer relists: routine, not a failure to report
        if self.failing != reason:
            log.warning(
                "pod metadata: %s; records ship without labels until it works again "
                "(the informer retries with backoff)%s", exc,
                " - the agent's ServiceAccount needs get, list, watch on pods"
                if reason == "forbidden" else "",
            )  # fmt: skip
        self.failing = reason

    # --- lookups ----------------------------------------------------------------------
    def pod(self, identity: PodIdentity) -> Obj | None:
        """The cached pod, by uid (or by name for an identity without one).

        A static pod's log directory carries the kubelet's own UID (the hash of its
        manifest), which the API's mirror pod has as its ``kubernetes.io/config.mirror``
        annotation, not as ``metadata.uid``: found by name, then checked against it.
        """
        found = self.informer.get_by_uid(identity.pod_uid) if identity.pod_uid else None
        if found is None:
            named = self.informer.get(identity.namespace, identity.pod)
            if named is not None and (
                not identity.pod_uid or _mirror_of(named) == identity.pod_uid
            ):
                found = named
        if found is not None:
            return found
        with self._lock:
            now = self.clock()
            for uid in [u for u, (until, _) in self._gone.items() if until < now]:
                del self._gone[uid]
            kept = self._gone.get(identity.pod_uid)
        return kept[1] if kept is not None else None

    def admit(self, identity: PodIdentity, first_seen: float) -> Verdict:
        """Read, skip (opted out) or wait a little (cannot tell yet) for a pod's file."""
        now = self.clock()
        if not self.synced:
            waited = now - self.started
            return Verdict.WAIT if waited < self.cfg.sync_timeout else Verdict.READ
        found = self.pod(identity)
        if found is None:
            return Verdict.WAIT if now - first_seen < self.cfg.pod_wait else Verdict.READ
        annotations = (found.get("metadata") or {}).get("annotations") or {}
        if str(annotations.get(self.cfg.opt_out_annotation, "")).lower() == "false":
            return Verdict.SKIP
        return Verdict.READ

    def fields(self, identity: PodIdentity) -> Obj:
        """Labels, annotations and owner chosen for records (empty when unknown)."""
        found = self.pod(identity)
        if found is None:
            return {}
        md = found.get("metadata") or {}
        out: Obj = {}
        labels = _pick(md.get("labels") or {}, self.cfg.labels)
        if labels:
            out["labels"] = labels
        annotations = _pick(md.get("annotations") or {}, self.cfg.annotations)
        if annotations:
            out["annotations"] = annotations
        owner = owner_of(md)
        if owner is not None:
            out["owner"] = owner
        return out


MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
"""Set by the kubelet on a static pod's mirror: the static pod's UID (kubetypes)."""


def _mirror_of(pod: Obj) -> str:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(MIRROR_ANNOTATION, ""))


def owner_of(md: Obj) -> dict[str, str] | None:
    """The controller, with a Deployment's ReplicaSet reported as the Deployment."""
    refs = [r for r in md.get("ownerReferences") or [] if isinstance(r, dict)]
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if ref is None:
        return None
    kind, name = str(ref.get("kind", "")), str(ref.get("name", ""))
    pod_hash = str((md.get("labels") or {}).get("pod-template-hash", ""))
    if kind == "ReplicaSet" and pod_hash and name.endswith("-" + pod_hash):
        return {"kind": "Deployment", "name": name[: -len(pod_hash) - 1]}
    return {"kind": kind, "name": name}


def _pick(values: dict[str, Any], globs: list[str]) -> dict[str, str]:
    return {
        str(k): str(v) for k, v in values.items() if any(fnmatch.fnmatchcase(k, g) for g in globs)
    }
