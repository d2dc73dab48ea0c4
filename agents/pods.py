"""What the agent decides per file on a Kubernetes node: format, pod, read or not, meta.

One object per agent, asked once per file at discovery and once per emitted batch:

- **format**: the first of ``formats`` (glob -> format) matching the path, else
  ``format`` (``auto`` is resolved by the tailer from the file's first line);
- **pod identity** from the path (:mod:`agents.podpath`), cached per path;
- **admission**: namespace include/exclude globs (from the path, no API), then, with
  pod metadata on, the pod's opt-out annotation (:meth:`PodMetadata.admit`). A file
  that must wait (metadata not synced yet, pod not in the cache yet) is looked at again
  at the next discovery, which the agent runs early while anything waits;
- **meta**: the ``meta`` JSON of the file's stream entries, rebuilt only when the pod
  cache changed (a counter), so a batch costs a dict lookup.
"""

from __future__ import annotations

import enum
import fnmatch
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from agents.podpath import PodIdentity, identify
from opsq.core.config.logs import AgentSettings, KubernetesSettings
from opsq.core.errors import ConfigError
from opsq.core.metrics import logs_agent as metrics

if TYPE_CHECKING:  # the informer pulls in the kubernetes client (~15 MB): only when on
    from agents.podmeta import PodMetadata

log = logging.getLogger(__name__)

Meta = Callable[[], bytes]


class Verdict(enum.Enum):
    READ = "read"
    WAIT = "wait"
    """Not yet known whether the pod opted out: look again shortly."""
    SKIP = "skip"


def node_name(cfg: AgentSettings) -> str | None:
    """``kubernetes.node_name``, else the NODE_NAME variable (the downward API)."""
    return cfg.kubernetes.node_name or os.environ.get("NODE_NAME") or None


class PodFiles:
    def __init__(self, cfg: AgentSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.k8s = cfg.kubernetes
        self.node = node_name(cfg)
        self.clock = clock
        self.metadata: PodMetadata | None = None
        self._identities: dict[str, PodIdentity | None] = {}
        self._first_seen: dict[str, float] = {}
        self._skipped: set[str] = set()
        self.waiting = False
        """True when the last discovery left a file waiting for pod metadata."""
        self._announced = False

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Start the pod informer when metadata is on (config errors exit 2)."""
        if not self.k8s.metadata.enabled:
            return
        if self.node is None:
            raise ConfigError(
                "logs.agent.kubernetes.metadata.enabled needs this node's name: set NODE_NAME "
                "from the downward API (fieldRef spec.nodeName) or "
                "logs.agent.kubernetes.node_name"
            )
        # Imported here: the kubernetes client costs ~15 MB of RSS, for metadata users only.
        from agents.podmeta import PodMetadata  # noqa: PLC0415
        from opsq.engines.cleanup.kube import load_api_client  # noqa: PLC0415

        client = load_api_client(self.k8s.metadata.kubeconfig)
        self.metadata = PodMetadata(self.k8s, self.node, client).start()

    def stop(self) -> None:
        if self.metadata is not None:
            self.metadata.stop()

    def settled(self) -> bool:
        """True once, when the pod informer has just synced and files wait: look again now."""
        if self._announced or self.metadata is None or not self.metadata.synced:
            return False
        self._announced = True
        return self.waiting

    # --- per file ---------------------------------------------------------------------
    def format_of(self, path: str) -> str:
        for pattern, fmt in self.cfg.formats.items():
            if fnmatch.fnmatch(path, pattern):
                return fmt
        return self.cfg.format

    def identity(self, path: str) -> PodIdentity | None:
        if path not in self._identities:
            self._identities[path] = identify(
                path, pods_dir=self.k8s.pods_dir, containers_dir=self.k8s.containers_dir
            )
        return self._identities[path]

    def admit(self, path: str) -> bool:
        """Whether to open *path* now (False: skipped for good, or not yet)."""
        identity = self.identity(path)
        if identity is None:
            return True
        if not namespace_allowed(identity.namespace, self.k8s):
            self._skip(path, "namespace", f"namespace {identity.namespace} is excluded")
            return False
        if self.metadata is None:
            return True
        first_seen = self._first_seen.setdefault(path, self.clock())
        verdict = self.metadata.admit(identity, first_seen)
        if verdict is Verdict.WAIT:
            self.waiting = True
            return False
        if verdict is Verdict.SKIP:
            note = f"pod {identity.namespace}/{identity.pod} opted out"
            self._skip(path, "annotation", note)
            return False
        self._first_seen.pop(path, None)
        self._skipped.discard(path)
        return True

    def opted_out(self, path: str) -> bool:
        """An open file whose pod has been annotated opsq.io/logs: "false" since."""
        identity = self.identity(path)
        if identity is None or self.metadata is None or not self.metadata.synced:
            return False
        if self.metadata.admit(identity, self.clock()) is not Verdict.SKIP:
            return False
        self._skip(path, "annotation", f"pod {identity.namespace}/{identity.pod} opted out")
        return True

    def _skip(self, path: str, reason: str, why: str) -> None:
        if path not in self._skipped:
            self._skipped.add(path)
            metrics.FILES_EXCLUDED.labels(reason=reason).inc()
            log.info("not reading %s: %s", path, why)

    def forget(self, paths: set[str]) -> None:
        """Drop cached state of paths no discovery matches any more."""
        for cache in (self._identities, self._first_seen):
            for path in [p for p in cache if p not in paths]:
                del cache[path]
        self._skipped &= paths

    def meta(self, path: str) -> Meta | None:
        """A callable giving the current ``meta`` bytes of *path*'s entries, or None."""
        identity = self.identity(path)
        if identity is None:
            return None
        return _MetaCache(identity, self.node, self.metadata)


class _MetaCache:
    """One file's ``meta`` bytes, rebuilt when the pod cache's version moved."""

    def __init__(
        self, identity: PodIdentity, node: str | None, metadata: PodMetadata | None
    ) -> None:
        self.identity = identity
        self.node = node
        self.metadata = metadata
        self.version = -1
        self.value = b""

    def __call__(self) -> bytes:
        version = self.metadata.version if self.metadata is not None else 0
        if version != self.version:
            extra = self.metadata.fields(self.identity) if self.metadata is not None else {}
            self.version, self.value = version, record_meta(self.identity, self.node, extra)
        return self.value


def namespace_allowed(namespace: str, settings: KubernetesSettings) -> bool:
    rules = settings.namespaces
    if any(fnmatch.fnmatchcase(namespace, g) for g in rules.exclude):
        return False
    return any(fnmatch.fnmatchcase(namespace, g) for g in rules.include)


def record_meta(identity: PodIdentity, node: str | None, extra: dict[str, Any]) -> bytes:
    """The ``meta`` field of a stream entry: identity from the path plus API fields."""
    doc: dict[str, Any] = {
        "namespace": identity.namespace,
        "pod": identity.pod,
        "container": identity.container,
    }
    if identity.pod_uid:
        doc["pod_uid"] = identity.pod_uid
    if identity.restart is not None:
        doc["restart"] = identity.restart
    if node:
        doc["node"] = node
    doc.update(extra)
    return orjson.dumps(doc)
