"""Pod identity from a container log file's path, without asking the API server.

The kubelet decides where container logs live (``pkg/kubelet/kuberuntime``,
``BuildPodLogsDirectory`` and ``BuildContainerLogsDirectory``)::

    /var/log/pods/<namespace>_<pod>_<pod uid>/<container>/<restart count>.log

and keeps, for tools that predate that layout, one symlink per container::

    /var/log/containers/<pod>_<namespace>_<container>-<container id>.log -> the file above

Kubernetes names cannot contain ``_`` (namespaces and containers are DNS labels, pods
DNS subdomains), so splitting on ``_`` is unambiguous. The kubelet rotates
``<n>.log`` to ``<n>.log.<YYYYMMDD-hhmmss>`` (then gzips it), so a rotated name keeps
the identity of the file it came from.

Identity from the path alone is what lets lines of a pod that is already gone (or an
API server that refuses us) still ship with namespace, pod and container: the API
only adds labels on top (:mod:`agents.podmeta`).

Both layouts can match the same file (a glob over ``/var/log/containers`` and one over
``/var/log/pods``). The agent opens files by device and inode, so the two names lead
to one tailer and are never read twice; a symlink name is resolved to its target
under ``pods_dir`` here to learn the pod uid and restart count it does not carry.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_ROTATED = re.compile(r"^(?P<n>\d+)\.log(?:\.(?P<suffix>[^/]+))?$")
"""``<n>.log`` or a rotated ``<n>.log.<suffix>`` (kubelet: ``20060102-150405``)."""

_CONTAINER_LINK = re.compile(
    r"^(?P<pod>[^_/]+)_(?P<namespace>[^_/]+)_(?P<container>[^_/]+)-(?P<id>[0-9a-f]{64})\.log$"
)


@dataclass(frozen=True, slots=True)
class PodIdentity:
    """Who wrote a container log file, as far as its path tells."""

    namespace: str
    pod: str
    container: str
    pod_uid: str = ""
    """Empty when only a /var/log/containers name was seen (its target was unknown)."""
    restart: int | None = None
    """The container's restart count: ``<n>`` of ``<n>.log``."""
    container_id: str = ""


def from_pods_path(path: str, pods_dir: str) -> PodIdentity | None:
    """Identity of ``<pods_dir>/<ns>_<pod>_<uid>/<container>/<n>.log[.<suffix>]``."""
    rel = _relative(path, pods_dir)
    if rel is None:
        return None
    parts = rel.split("/")
    if len(parts) != 3:
        return None
    pod_dir, container, name = parts
    fields = pod_dir.split("_")
    match = _ROTATED.match(name)
    if len(fields) != 3 or not all(fields) or not container or match is None:
        return None
    namespace, pod, uid = fields
    return PodIdentity(namespace, pod, container, uid, int(match["n"]))


def from_containers_path(path: str, containers_dir: str) -> PodIdentity | None:
    """Identity of ``<containers_dir>/<pod>_<ns>_<container>-<64 hex id>.log``."""
    rel = _relative(path, containers_dir)
    if rel is None or "/" in rel:
        return None
    match = _CONTAINER_LINK.match(rel)
    if match is None:
        return None
    return PodIdentity(match["namespace"], match["pod"], match["container"],
                       container_id=match["id"])  # fmt: skip


def identify(path: str, *, pods_dir: str, containers_dir: str) -> PodIdentity | None:
    """The identity of *path* under either layout, or None for any other file.

    A /var/log/containers symlink is followed (only to read its target's name, one
    level at a time, never outside ``pods_dir``) to fill in the uid and restart count.
    """
    found = from_pods_path(path, pods_dir)
    if found is not None:
        return found
    link = from_containers_path(path, containers_dir)
    if link is None:
        return None
    target = _link_target(path)
    behind = from_pods_path(target, pods_dir) if target else None
    if behind is None or (behind.namespace, behind.pod) != (link.namespace, link.pod):
        return link
    return PodIdentity(link.namespace, link.pod, link.container, behind.pod_uid,
                       behind.restart, link.container_id)  # fmt: skip


def rotation_base(path: str) -> tuple[str, str]:
    """``(live name, suffix)`` for a rotated name, ``(path, "")`` for a live one.

    ``0.log.20260101-120000`` -> (``0.log``, ``20260101-120000``) (the kubelet);
    ``x-json.log.1`` -> (``x-json.log``, ``1``) (Docker's json-file). Compressed
    and temporary names (``.gz``, ``.tmp``) are not rotations a reader continues from.
    """
    head, dot, suffix = path.rpartition(".")
    if not dot or "/" in suffix or not head.endswith(".log"):
        return path, ""
    if suffix.isdigit() or re.fullmatch(r"\d{8}-\d{6}", suffix):
        return head, suffix
    return path, ""


def rotation_order(suffix: str) -> tuple[int, str]:
    """Sort key, oldest first: kubelet stamps ascend; Docker's ``.1`` is the newest."""
    if not suffix:
        return (2, "")  # the live file comes last
    if suffix.isdigit():
        return (0, f"{10**9 - int(suffix):010d}")
    return (1, suffix)


def _relative(path: str, root: str) -> str | None:
    root = root.rstrip("/")
    if not root or not path.startswith(root + "/"):
        return None
    return path[len(root) + 1 :]


def _link_target(path: str) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        return ""
    return os.path.normpath(os.path.join(os.path.dirname(path), target))
