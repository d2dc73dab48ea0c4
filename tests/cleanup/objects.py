"""Builders for Kubernetes object dicts as the API server returns them (tests only)."""

from __future__ import annotations

import uuid
from typing import Any

from opsq.engines.cleanup.planner import format_time

Obj = dict[str, Any]


def _meta(name: str, namespace: str, created: float, **extra: Any) -> Obj:
    return {
        "name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
        "resourceVersion": "1", "creationTimestamp": format_time(created), **extra,
    }  # fmt: skip


def job(
    name: str,
    *,
    namespace: str = "default",
    created: float = 0.0,
    finished: float | None = None,
    failed: bool = False,
    labels: dict[str, str] | None = None,
    **meta: Any,
) -> Obj:
    """A batch/v1 Job; ``finished`` sets the Complete (or Failed) condition at that time."""
    status: Obj = {}
    if finished is not None:
        kind = "Failed" if failed else "Complete"
        status["conditions"] = [
            {"type": kind, "status": "True", "lastTransitionTime": format_time(finished)}
        ]
        if not failed:
            status["completionTime"] = format_time(finished)
    else:
        status["active"] = 1
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(name, namespace, created, labels=labels or {}, **meta),
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        "status": status,
    }  # fmt: skip


def pod(
    name: str,
    *,
    namespace: str = "default",
    created: float = 0.0,
    phase: str = "Running",
    ended: float | None = None,
    reason: str | None = None,
    owner: Obj | None = None,
    **meta: Any,
) -> Obj:
    status: Obj = {"phase": phase}
    if ended is not None:
        status["containerStatuses"] = [
            {
                "name": "c",
                "state": {"terminated": {"finishedAt": format_time(ended), "exitCode": 0}},
            }
        ]
    if reason:
        status["reason"] = reason
    md = _meta(name, namespace, created, **meta)
    if owner is not None:
        md["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"], "kind": owner["kind"],
                "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                "controller": True, "blockOwnerDeletion": True,
            }
        ]  # fmt: skip
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": md,
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}, "status": status,
    }  # fmt: skip
