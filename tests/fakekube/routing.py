"""URL -> (resource type, namespace, name, subresource, verb), as the apiserver routes.

Paths are the standard REST layout: ``/api/v1/namespaces/{ns}/pods/{name}/log``,
``/apis/batch/v1/jobs`` (all namespaces), the legacy ``/api/v1/watch/...`` prefix, plus
the discovery and version endpoints. The verb is the RBAC verb (``list`` vs ``get``,
``watch`` for ``?watch=1``, ``deletecollection``) because both authorization and the
request accounting are keyed by it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.fakekube import status as errors
from tests.fakekube.resources import Registry, ResourceType

TRUE_VALUES = ("1", "true", "True")


@dataclass(frozen=True)
class Route:
    """A parsed request path. ``discovery`` is set for non-resource endpoints."""

    rtype: ResourceType | None = None
    namespace: str | None = None
    name: str | None = None
    sub: str = ""
    watch_path: bool = False
    discovery: str = ""  # "api", "apis", "group", "resources", "version", "health"
    group: str = ""
    version: str = ""


def parse_path(registry: Registry, path: str) -> Route:
    parts = [p for p in path.split("/") if p]
    if not parts:
        return Route(discovery="root")
    if parts[0] == "version" and len(parts) == 1:
        return Route(discovery="version")
    if parts[0] in ("healthz", "livez", "readyz"):
        return Route(discovery="health")
    if parts[0] == "api":
        if len(parts) == 1:
            return Route(discovery="api")
        return _resource_route(registry, "", parts[1], parts[2:])
    if parts[0] == "apis":
        if len(parts) == 1:
            return Route(discovery="apis")
        if len(parts) == 2:
            if parts[1] not in registry.groups():
                raise errors.unknown_path()
            return Route(discovery="group", group=parts[1])
        return _resource_route(registry, parts[1], parts[2], parts[3:])
    raise errors.unknown_path()


def _resource_route(registry: Registry, group: str, version: str, rest: list[str]) -> Route:
    if not registry.in_group_version(group, version):
        raise errors.unknown_path()
    if not rest:
        return Route(discovery="resources", group=group, version=version)
    watch_path = rest[0] == "watch"
    if watch_path:
        rest = rest[1:]
    namespace = None
    namespaced_path = (
        len(rest) >= 3
        and rest[0] == "namespaces"
        and not (group == "" and rest[2] in ("status", "finalize"))
    )
    if namespaced_path:
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise errors.unknown_path()
    rtype = registry.get(group, version, rest[0])
    if rtype is None or (namespace is not None and not rtype.namespaced):
        raise errors.unknown_path()
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else ""
    if sub and sub not in rtype.subresources:
        raise errors.unknown_path()
    if rtype.namespaced and name is not None and namespace is None:
        raise errors.unknown_path()
    return Route(rtype, namespace, name, sub, watch_path, group=group, version=version)


def rbac_verb(method: str, route: Route, query: dict[str, str]) -> str:
    """The RBAC verb of a resource request."""
    watching = route.watch_path or query.get("watch") in TRUE_VALUES
    if method in ("GET", "HEAD"):
        if watching:
            return "watch"
        return "get" if route.name else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if route.name else "deletecollection"
    return method.lower()
