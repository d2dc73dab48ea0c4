"""The resource types the fake serves, and the facts discovery publishes about them.

One :class:`ResourceType` per group/version/plural holds everything that differs between
kinds on a real API server: scope, verbs, subresources, the field labels its field
selector accepts, whether ``DELETE`` returns the object or a ``Status``, and the default
propagation policy (batch/v1 Jobs orphan their pods unless told otherwise). Custom
resources are registered at run time with :meth:`Registry.register_crd`, which is how
"any CRD works" is tested without a CustomResourceDefinition controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")

# Field labels every object supports (apimachinery's DefaultMetaV1FieldSelectorConversion).
NAMESPACED_META_FIELDS = ("metadata.name", "metadata.namespace")
CLUSTER_META_FIELDS = ("metadata.name",)

POD_FIELDS = (
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
)
EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)
EVENTS_K8S_FIELDS = ("regarding.kind", "regarding.name", "regarding.namespace", "reason", "type")


@dataclass(frozen=True)
class ResourceType:
    """One servable resource: ``group/version/plural`` plus its server-side behaviour."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ("status",)
    fields: tuple[str, ...] = ()
    # Pods (and a few others) answer DELETE with the object; everything else with a Status.
    return_deleted_object: bool = False
    default_propagation: str = "Background"
    # Pods get graceful deletion (deletionTimestamp now + grace, removed when it elapses).
    graceful: bool = False
    custom: bool = False
    categories: tuple[str, ...] = field(default=())

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``pods`` or ``jobs.batch``: how error messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def field_labels(self) -> tuple[str, ...]:
        meta = NAMESPACED_META_FIELDS if self.namespaced else CLUSTER_META_FIELDS
        return meta + self.fields

    def discovery_entries(self) -> list[dict[str, object]]:
        """This type's entries in an ``APIResourceList`` (the resource and subresources)."""
        entry: dict[str, object] = {
            "name": self.plural,
            "singularName": self.singular or self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        for sub in self.subresources:
            verbs = ["get"] if sub == "log" else list(STATUS_VERBS)
            kind = self.kind
            if sub == "eviction":
                verbs, kind = ["create"], "Eviction"
            entries.append(
                {
                    "name": f"{self.plural}/{sub}",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": kind,
                    "verbs": verbs,
                }
            )
        return entries


def _builtin_types() -> list[ResourceType]:
    return [
        ResourceType(
            "",
            "v1",
            "namespaces",
            "Namespace",
            namespaced=False,
            short_names=("ns",),
            subresources=("status", "finalize"),
            fields=("status.phase",),
            return_deleted_object=True,
        ),
        ResourceType(
            "",
            "v1",
            "pods",
            "Pod",
            short_names=("po",),
            subresources=("status", "log", "eviction"),
            fields=POD_FIELDS,
            return_deleted_object=True,
            graceful=True,
            categories=("all",),
        ),
        ResourceType(
            "", "v1", "events", "Event", short_names=("ev",), subresources=(), fields=EVENT_FIELDS
        ),
        ResourceType(
            "", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",)
        ),
        ResourceType(
            "",
            "v1",
            "persistentvolumes",
            "PersistentVolume",
            namespaced=False,
            short_names=("pv",),
        ),
        ResourceType("", "v1", "configmaps", "ConfigMap", short_names=("cm",), subresources=()),
        ResourceType("", "v1", "secrets", "Secret", subresources=(), fields=("type",)),
        ResourceType(
            "", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",), subresources=()
        ),
        ResourceType("", "v1", "services", "Service", short_names=("svc",), categories=("all",)),
        ResourceType(
            "",
            "v1",
            "nodes",
            "Node",
            namespaced=False,
            short_names=("no",),
            fields=("spec.unschedulable",),
        ),
        ResourceType(
            "batch",
            "v1",
            "jobs",
            "Job",
            fields=("status.successful",),
            default_propagation="Orphan",
            categories=("all",),
        ),
        ResourceType(
            "batch", "v1", "cronjobs", "CronJob", short_names=("cj",), categories=("all",)
        ),
        ResourceType(
            "apps", "v1", "deployments", "Deployment", short_names=("deploy",), categories=("all",)
        ),
        ResourceType(
            "apps",
            "v1",
            "replicasets",
            "ReplicaSet",
            short_names=("rs",),
            fields=("status.replicas",),
            categories=("all",),
        ),
        ResourceType(
            "apps", "v1", "statefulsets", "StatefulSet", short_names=("sts",), categories=("all",)
        ),
        ResourceType(
            "apps", "v1", "daemonsets", "DaemonSet", short_names=("ds",), categories=("all",)
        ),
        ResourceType(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            short_names=("ev",),
            subresources=(),
            fields=EVENTS_K8S_FIELDS,
        ),
        ResourceType("coordination.k8s.io", "v1", "leases", "Lease", subresources=()),
        ResourceType(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            subresources=(),
        ),
        ResourceType(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            subresources=(),
        ),
        ResourceType(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            namespaced=False,
            subresources=(),
        ),
        ResourceType(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            namespaced=False,
            subresources=(),
        ),
    ]


class Registry:
    """Lookup of resource types by group/version/plural, as discovery and routing need."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self.reset()

    def reset(self) -> None:
        """Only the built-in types again (custom resources are per test)."""
        self._types.clear()
        for rtype in _builtin_types():
            self.add(rtype)

    def add(self, rtype: ResourceType) -> ResourceType:
        self._types[rtype.key] = rtype
        return rtype

    def register_crd(
        self,
        group: str,
        version: str,
        plural: str,
        kind: str,
        *,
        namespaced: bool = True,
        status_subresource: bool = True,
        short_names: tuple[str, ...] = (),
    ) -> ResourceType:
        """Serve a custom resource, as if its CustomResourceDefinition were established."""
        return self.add(
            ResourceType(
                group,
                version,
                plural,
                kind,
                namespaced=namespaced,
                short_names=short_names,
                subresources=("status",) if status_subresource else (),
                custom=True,
            )
        )

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def lookup(self, resource: str) -> ResourceType:
        """Find a type by ``v1/pods`` / ``batch/v1/jobs`` (the cleanup rule format)."""
        parts = resource.split("/")
        group, version, plural = ("", *parts) if len(parts) == 2 else parts
        rtype = self.get(group, version, plural)
        if rtype is None:
            raise KeyError(f"unknown resource {resource!r}")
        return rtype

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def groups(self) -> dict[str, list[str]]:
        """Named groups (not the core group) and their versions, in registration order."""
        out: dict[str, list[str]] = {}
        for rtype in self._types.values():
            if rtype.group and rtype.version not in out.setdefault(rtype.group, []):
                out[rtype.group].append(rtype.version)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for t in self._types.values() if t.group == group and t.version == version]
