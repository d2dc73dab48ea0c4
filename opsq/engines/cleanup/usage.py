"""Is a PersistentVolumeClaim still used? The question behind ``when: {unused: true}``.

A claim is *used* when (kube-janitor asks the same questions):

- a pod in its namespace mounts it (``spec.volumes[].persistentVolumeClaim.claimName``),
  whatever the pod's phase: a finished pod of a Job may be restarted by its owner;
- a Deployment, DaemonSet, ReplicaSet, Job or CronJob in its namespace mounts it in its
  pod template (scaled to zero today, or on a node pool scaled to zero, mounting it
  again tomorrow);
- a StatefulSet in its namespace would claim it again: its ``volumeClaimTemplates``
  name the claims ``<template>-<statefulset>-<ordinal>``, and a scale-up re-attaches
  exactly those.

Only the claim references of these objects are kept (:func:`reduce`), so the pod cache
of a large cluster stays small. :class:`UsageIndex` answers from objects in hand (a
one-shot's LISTs, the informer caches); :class:`LiveUsage` LISTs the namespace at the
moment of deletion (the worker's last check before the DELETE). Anything that cannot be
listed answers UNKNOWN, and the planner skips the claim: not knowing is never a reason
to delete.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opsq.core.config.cleanup import ResourceRef
from opsq.core.errors import OpsqError
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.lister import keep_spec, list_all
from opsq.engines.cleanup.planner import UsageState, meta

Obj = dict[str, Any]

CLAIMS_KEY = "opsqClaims"
"""Where :func:`reduce` keeps the claim names an object mounts."""
TEMPLATES_KEY = "opsqClaimTemplates"
"""Where :func:`reduce` keeps a StatefulSet's claim name patterns."""


@dataclass(frozen=True)
class Referrer:
    """A kind that can use claims, and where its pod spec lives."""

    resource: ResourceRef
    pod_spec: tuple[str, ...]


REFERRERS = (
    Referrer(ResourceRef.parse("v1/pods"), ("spec",)),
    Referrer(ResourceRef.parse("apps/v1/statefulsets"), ("spec", "template", "spec")),
    Referrer(ResourceRef.parse("apps/v1/deployments"), ("spec", "template", "spec")),
    # A DaemonSet on a node pool scaled to zero (GPU nodes at night) has no pods, and a
    # bare ReplicaSet scaled to 0 none either: their claims are still theirs.
    Referrer(ResourceRef.parse("apps/v1/daemonsets"), ("spec", "template", "spec")),
    Referrer(ResourceRef.parse("apps/v1/replicasets"), ("spec", "template", "spec")),
    Referrer(ResourceRef.parse("batch/v1/jobs"), ("spec", "template", "spec")),
    Referrer(
        ResourceRef.parse("batch/v1/cronjobs"),
        ("spec", "jobTemplate", "spec", "template", "spec"),
    ),
)
"""What a PVC rule must read (and `opsq cleanup rbac` grants list/watch on)."""


def _dig(obj: Obj, path: Iterable[str]) -> Any:
    node: Any = obj
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def claims_of(obj: Obj, pod_spec: tuple[str, ...]) -> list[str]:
    volumes = _dig(obj, (*pod_spec, "volumes")) or []
    names = [((v or {}).get("persistentVolumeClaim") or {}).get("claimName") for v in volumes]
    return sorted({str(n) for n in names if n})


def templates_of(obj: Obj) -> list[str]:
    """Regexes of the claims a StatefulSet's volumeClaimTemplates name."""
    name = re.escape(str(meta(obj).get("name") or ""))
    templates = _dig(obj, ("spec", "volumeClaimTemplates")) or []
    prefixes = [str(((t or {}).get("metadata") or {}).get("name") or "") for t in templates]
    return [f"^{re.escape(p)}-{name}-[0-9]+$" for p in prefixes if p]


def reducer(referrer: Referrer) -> Callable[[Obj], Obj]:
    """An informer transform keeping metadata and the claim references only."""

    def reduce(obj: Obj) -> Obj:
        md = meta(obj)
        keep = ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp")
        out: Obj = {"metadata": {k: md[k] for k in keep if k in md}}
        out[CLAIMS_KEY] = claims_of(obj, referrer.pod_spec)
        if referrer.resource.plural == "statefulsets":
            out[TEMPLATES_KEY] = templates_of(obj)
        return out

    return reduce


class UsageIndex:
    """Answers from reduced objects in hand; ``complete=False`` namespaces are UNKNOWN."""

    def __init__(self) -> None:
        self.claims: dict[str, set[str]] = {}
        self.templates: dict[str, list[re.Pattern[str]]] = {}
        self.unknown: set[str | None] = set()
        """Namespaces (None: all) whose referrers could not be listed."""

    def add(self, reduced: Obj) -> None:
        namespace = str(meta(reduced).get("namespace") or "")
        self.claims.setdefault(namespace, set()).update(reduced.get(CLAIMS_KEY) or [])
        patterns = [re.compile(p) for p in reduced.get(TEMPLATES_KEY) or []]
        self.templates.setdefault(namespace, []).extend(patterns)

    def __call__(self, namespace: str, name: str) -> UsageState:
        if None in self.unknown or namespace in self.unknown:
            return UsageState.UNKNOWN
        if name in self.claims.get(namespace, set()):
            return UsageState.IN_USE
        if any(p.match(name) for p in self.templates.get(namespace, [])):
            return UsageState.IN_USE
        return UsageState.UNUSED


def index_of(objects: Iterable[Obj]) -> UsageIndex:
    index = UsageIndex()
    for obj in objects:
        index.add(obj)
    return index


class LiveUsage:
    """Lists the namespace's referrers now (one LIST per kind); UNKNOWN on any failure."""

    def __init__(self, list_namespace: Callable[[ResourceRef, str], list[Obj]]) -> None:
        self.list_namespace = list_namespace

    def __call__(self, namespace: str, name: str) -> UsageState:
        index = UsageIndex()
        for referrer in REFERRERS:
            try:
                objects = self.list_namespace(referrer.resource, namespace)
            except OpsqError:
                return UsageState.UNKNOWN
            for obj in objects:
                index.add(reducer(referrer)(obj))
        return index(namespace, name)


def namespace_lister(kube: Kube, page_size: int) -> Callable[[ResourceRef, str], list[Obj]]:
    """``(resource, namespace) -> objects`` for :class:`LiveUsage`, via paginated LISTs."""

    def list_namespace(resource: ResourceRef, namespace: str) -> list[Obj]:
        return list_all(kube, resource, namespace, page_size=page_size, transform=keep_spec).items

    return list_namespace
