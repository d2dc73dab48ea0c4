"""Answering "does this object's owner still exist, and is it an active Job?".

The owner guard is only consulted for objects that are otherwise due, so most plans
never look an owner up. When one is needed:

1. objects already in hand (the current LIST or the informer cache) answer by UID for
   free;
2. otherwise one GET of the owner, by kind mapped to its resource (built-in kinds from
   a table, others through API discovery, cached per group/version);
3. anything that cannot be answered (403, discovery failure) is ``UNKNOWN``, and the
   planner skips the object: not knowing is never a reason to delete.

A 404 or a different UID at the owner's name means the owner is gone (the object is
an orphan the garbage collector has not reached yet, or was orphaned on purpose).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opsq.core.config.cleanup import ResourceRef, Rule
from opsq.core.errors import OpsqError
from opsq.engines.cleanup.kube import Kube, NotFound
from opsq.engines.cleanup.planner import OwnerState, job_finished_at, meta

Obj = dict[str, Any]

_BUILTIN = {
    ("batch", "Job"): "jobs",
    ("batch", "CronJob"): "cronjobs",
    ("apps", "ReplicaSet"): "replicasets",
    ("apps", "Deployment"): "deployments",
    ("apps", "StatefulSet"): "statefulsets",
    ("apps", "DaemonSet"): "daemonsets",
    ("", "Pod"): "pods",
    ("", "ReplicationController"): "replicationcontrollers",
    ("", "Node"): "nodes",
}
_CLUSTER_SCOPED = {("", "Node"), ("", "Namespace")}

TYPICAL_OWNERS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("", "pods"): (
        ("batch", "jobs"), ("apps", "replicasets"), ("apps", "statefulsets"),
        ("apps", "daemonsets"), ("", "replicationcontrollers"),
    ),
    ("batch", "jobs"): (("batch", "cronjobs"),),
    ("apps", "replicasets"): (("apps", "deployments"),),
    ("", "persistentvolumeclaims"): (("apps", "statefulsets"), ("", "pods")),
}  # fmt: skip
"""(group, plural) of a resource -> the (group, plural) of the owners its objects usually
have: what the owner guard GETs, so what `opsq cleanup rbac` grants ``get`` on. Without
it every Job-owned Pod of a "delete Succeeded pods" rule was ``owner-unverifiable``."""


def owner_kinds(rule: Rule) -> tuple[tuple[str, str], ...]:
    """The owners the guard may look up for *rule*'s objects. With
    ``delete_if_owner_exists`` only a Job is looked up (an active one still forbids)."""
    kinds = TYPICAL_OWNERS.get((rule.resource.group, rule.resource.plural), ())
    if rule.delete_if_owner_exists:
        kinds = tuple(k for k in kinds if k == ("batch", "jobs"))
    return kinds


def _state_of(owner: Obj, group: str, kind: str) -> OwnerState:
    """*group*/*kind* come from the ownerReference: items of a LIST carry no ``kind``
    (only the list does), so the informer cache cannot say that an owner is a Job."""
    if (group, kind) == ("batch", "Job") and job_finished_at(owner) is None:
        return OwnerState.ACTIVE_JOB
    return OwnerState.EXISTS


class OwnerResolver:
    """A callable ``(namespace, ownerReference) -> OwnerState`` backed by the API."""

    def __init__(self, kube: Kube, known: Callable[[str], Obj | None] | None = None) -> None:
        self.kube = kube
        self.known = known or (lambda uid: None)
        self._plurals: dict[tuple[str, str], str | None] = dict(_BUILTIN)

    def __call__(self, namespace: str, ref: Obj) -> OwnerState:
        uid = str(ref.get("uid", ""))
        group, _, version = str(ref.get("apiVersion", "")).rpartition("/")
        kind = str(ref.get("kind", ""))
        cached = self.known(uid)
        if cached is not None:
            return _state_of(cached, group, kind)
        plural = self._plural(group, version, kind)
        if plural is None:
            return OwnerState.UNKNOWN
        resource = ResourceRef(group=group, version=version, plural=plural)
        scope = None if (group, kind) in _CLUSTER_SCOPED else namespace
        try:
            owner = self.kube.get(resource, scope, str(ref.get("name", "")))
        except NotFound:
            return OwnerState.GONE
        except OpsqError:
            return OwnerState.UNKNOWN
        if meta(owner).get("uid") != uid:
            return OwnerState.GONE  # a new object reuses the name; ours is gone
        return _state_of(owner, group, kind)

    def _plural(self, group: str, version: str, kind: str) -> str | None:
        if (group, kind) not in self._plurals:
            found = self._discover(group, version)
            if found is None:
                return None  # not cached: a long-running watcher must ask again later
            self._plurals.update(found)
            self._plurals.setdefault((group, kind), None)
        return self._plurals[(group, kind)]

    def _discover(self, group: str, version: str) -> dict[tuple[str, str], str | None] | None:
        """Kind -> plural for one group/version; None when the API could not answer now."""
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        try:
            doc = self.kube.discovery(path)
        except NotFound:
            return {}  # no such group/version: the kind stays unknown
        except OpsqError:
            return None
        return {
            (group, str(r.get("kind"))): str(r.get("name"))
            for r in doc.get("resources") or []
            if "/" not in str(r.get("name", ""))  # skip subresources such as jobs/status
        }
