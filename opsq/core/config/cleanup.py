"""Kubernetes cleanup rules: the ``cleanup:`` section of the main config.

Shape::

    cleanup:
      dry_run: true                 # --apply or dry_run: false deletes for real
      max_deletions_per_run: 500
      delete_rate: 10               # deletions per second, across all workers
      events: false                 # create a Kubernetes Event for each deletion
      ttl_annotation: opsq.io/ttl
      expires_annotation: opsq.io/expires
      rules:
        - name: finished-jobs
          resource: batch/v1/jobs
          namespaces: {include: ["*"], exclude: ["kube-system"]}
          label_selector: "team=batch"
          when: {finished: true, older_than: 1h}

Everything is validated before any API call so that a typo in a rule fails the whole
command at start (exit 2) instead of silently matching nothing, or everything. A rule
with no condition at all is refused: "delete every Pod" must never be one missing line
away. Errors name the rule by index and name (``rules[1] (name 'dead-pods')``) via
:func:`opsq.core.loading.describe_errors`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any, Literal

import jmespath
from jmespath import functions as jmespath_functions
from jmespath.exceptions import JMESPathError
from pydantic import Field, ValidationInfo, field_validator, model_validator

from opsq.core.config.base import Section
from opsq.core.config.fields import ExistingFile
from opsq.core.durations import Duration

# DNS-1123 subdomain for groups, DNS-1035-ish label for plurals and versions.
_GROUP = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_VERSION = r"v[0-9]+((alpha|beta)[0-9]+)?"
_PLURAL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_RESOURCE = re.compile(rf"^(?:(?P<group>{_GROUP})/)?(?P<version>{_VERSION})/(?P<plural>{_PLURAL})$")

# Label selector grammar (k8s.io/apimachinery/pkg/labels): key[=|==|!=]value,
# key in (a,b), key notin (a,b), key, !key. Keys may carry a DNS prefix.
_KEY = r"([a-z0-9A-Z.-]{1,253}/)?[a-z0-9A-Z]([-a-z0-9A-Z_.]{0,61}[a-z0-9A-Z])?"
_VALUE = r"([a-z0-9A-Z]([-a-z0-9A-Z_.]{0,61}[a-z0-9A-Z])?)?"
_REQUIREMENT = re.compile(
    rf"^\s*(?:!\s*{_KEY}"
    rf"|{_KEY}\s*(?:(?:==|!=|=)\s*{_VALUE}"
    rf"|\s(?:in|notin)\s*\(\s*{_VALUE}(?:\s*,\s*{_VALUE})*\s*\)"
    rf")?)\s*$"
)
_FIELD_REQ = re.compile(r"^\s*[A-Za-z0-9_.]+\s*(==|!=|=)\s*[^,=!]*\s*$")

PropagationPolicy = Literal["Background", "Foreground", "Orphan"]
PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]


def split_requirements(selector: str) -> list[str]:
    """Split a label selector on commas that are not inside ``in (...)`` sets."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


@lru_cache(maxsize=256)
def compile_match(expression: str) -> Any:
    """A compiled JMESPath expression; ValueError naming the problem when it does not parse
    or calls a function JMESPath does not have (or with the wrong number of arguments):
    jmespath only finds those while searching, object by object."""
    try:
        compiled = jmespath.compile(expression)
    except JMESPathError as exc:
        raise ValueError(
            f"match {expression!r} is not a JMESPath expression: {exc}; e.g. "
            "\"status.phase == 'Failed'\" or \"metadata.labels.keep != 'true'\""
        ) from exc
    for name, given in _calls(compiled.parsed):
        _check_call(expression, name, given)
    return compiled


def _calls(node: Any) -> list[tuple[str, int]]:
    """(function name, argument count) of every call in a parsed JMESPath expression."""
    if not isinstance(node, dict):
        return []
    children = node.get("children") or []
    found = (
        [(str(node.get("value")), len(children))]
        if node.get("type") == "function_expression"
        else []
    )
    for child in children:
        found += _calls(child)
    return found


def _check_call(expression: str, name: str, given: int) -> None:
    table = jmespath_functions.Functions.FUNCTION_TABLE
    if name not in table:
        known = ", ".join(sorted(table))
        raise ValueError(
            f"match {expression!r} calls {name}(), which JMESPath lacks; known: {known}"
        )
    signature = table[name]["signature"]
    variadic = bool(signature) and bool(signature[-1].get("variadic"))
    if given < len(signature) or (given > len(signature) and not variadic):
        wanted = f"at least {len(signature)}" if variadic else str(len(signature))
        raise ValueError(
            f"match {expression!r} calls {name}() with {given} argument(s); it takes {wanted}"
        )


CLUSTER_SCOPED = frozenset(
    {
        ("", "namespaces"), ("", "persistentvolumes"), ("", "nodes"),
        ("storage.k8s.io", "storageclasses"), ("rbac.authorization.k8s.io", "clusterroles"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
    }
)  # fmt: skip
"""Built-in kinds without a namespace; custom ones say ``cluster_scoped: true``."""


def check_label_selector(selector: str) -> str:
    """Raise ValueError unless *selector* parses as a Kubernetes label selector."""
    for requirement in split_requirements(selector):
        if not _REQUIREMENT.match(requirement):
            raise ValueError(
                f"label_selector {selector!r}: {requirement.strip()!r} is not a requirement "
                "such as app=web, tier!=db, env in (a,b), !legacy"
            )
    return selector


class ResourceRef(Section):
    """``group/version/plural`` (``v1/pods`` for the core group)."""

    group: str
    version: str
    plural: str

    @classmethod
    def parse(cls, text: str) -> ResourceRef:
        match = _RESOURCE.match(text.strip())
        if match is None:
            raise ValueError(
                f"resource {text!r} is not group/version/plural such as batch/v1/jobs, "
                "or v1/pods for the core group"
            )
        return cls(group=match["group"] or "", version=match["version"], plural=match["plural"])

    @property
    def is_pvc(self) -> bool:
        return (self.group, self.plural) == ("", "persistentvolumeclaims")

    @property
    def is_namespace(self) -> bool:
        return (self.group, self.plural) == ("", "namespaces")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def __str__(self) -> str:
        return f"{self.api_version}/{self.plural}"


class Namespaces(Section):
    include: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["*"])
    """Namespace names or globs (``*``, ``team-*``)."""
    exclude: list[str] = Field(default_factory=list)


class When(Section):
    """Conditions that must all hold for an object to be due."""

    finished: bool | None = None
    """Jobs: condition Complete or Failed is True. Age then counts from completion."""
    phase: list[PodPhase] | None = None
    """Pods: status.phase is one of these. Age counts from the pod's end."""
    older_than: Duration | None = None
    evicted: bool | None = None
    """Pods evicted by the kubelet (phase Failed, reason Evicted)."""
    pending_longer_than: Duration | None = None
    """Pods stuck in Pending for longer than this since creation."""
    ttl_annotation: bool | None = None
    """Only objects carrying a TTL or expiry annotation; due when it says."""
    unused: bool | None = None
    """PersistentVolumeClaims mounted by no pod and referenced by no workload."""
    match: str | None = None
    """A JMESPath expression over the object; the condition holds when it is truthy."""

    @field_validator("finished", "evicted", "ttl_annotation", "unused")
    @classmethod
    def _no_false(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        """``finished: false`` reads as "not finished" but would be ignored, so a rule
        ``{finished: false, older_than: 1d}`` deleted every Job older than a day,
        running ones included: a condition is ``true`` or absent."""
        if value is False:
            raise ValueError(
                f"{info.field_name}: false is not a condition (it would be ignored, not "
                f"negated); remove '{info.field_name}', or set it to true"
            )
        return value

    @field_validator("match")
    @classmethod
    def _match(cls, value: str | None) -> str | None:
        if value is not None:
            compile_match(value)
        return value

    @field_validator("phase")
    @classmethod
    def _phase(cls, value: list[PodPhase] | None) -> list[PodPhase] | None:
        if value is not None and not value:
            raise ValueError("phase list is empty; omit it or list phases such as Succeeded")
        return value

    def is_empty(self) -> bool:
        return all(v is None or v is False for v in self.model_dump().values())


class Rule(Section):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
    resource: ResourceRef
    namespaces: Namespaces = Field(default_factory=Namespaces)
    label_selector: str | None = None
    field_selector: str | None = None
    when: When = Field(default_factory=When)
    propagation_policy: PropagationPolicy = "Background"
    """Explicit on every DELETE: batch/v1 Jobs default to Orphan, stranding their pods."""
    grace_period_seconds: Annotated[int, Field(ge=0)] | None = None
    """None: the object's own terminationGracePeriodSeconds."""
    delete_if_owner_exists: bool = False
    force: bool = False
    """Allow a PersistentVolumeClaim rule without ``unused: true`` (deletes claims in use)."""
    notify_before: Annotated[Duration, Field(gt=0)] | None = None
    """Announce the deletion this long before it is due (a Kubernetes Event)."""
    notify: list[str] = Field(default_factory=list)
    """Notifiers (names under ``alerts.notifiers``) that also get the heads-up."""
    cluster_scoped: bool | None = None
    """None: known for built-in kinds (namespaces, persistentvolumes...), else namespaced."""

    @property
    def is_cluster_scoped(self) -> bool:
        if self.cluster_scoped is not None:
            return self.cluster_scoped
        return (self.resource.group, self.resource.plural) in CLUSTER_SCOPED

    @field_validator("resource", mode="before")
    @classmethod
    def _resource(cls, value: object) -> object:
        return ResourceRef.parse(value) if isinstance(value, str) else value

    @field_validator("label_selector")
    @classmethod
    def _labels(cls, value: str | None) -> str | None:
        return None if value is None else check_label_selector(value)

    @field_validator("field_selector")
    @classmethod
    def _fields(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for requirement in value.split(","):
            if not _FIELD_REQ.match(requirement):
                raise ValueError(
                    f"field_selector {value!r}: {requirement.strip()!r} is not a requirement "
                    "such as status.phase=Failed or metadata.name!=keep"
                )
        return value

    @model_validator(mode="after")
    def _has_condition(self) -> Rule:
        if self.when.is_empty():
            raise ValueError(
                f"rule {self.name!r} has no condition in 'when'; add e.g. older_than: 1h "
                "(a rule without conditions would delete everything it matches)"
            )
        if self.when.unused and not self.resource.is_pvc:
            raise ValueError(
                f"rule {self.name!r}: 'unused' applies to v1/persistentvolumeclaims only; "
                "remove it or change the resource"
            )
        if self.resource.is_pvc and not self.when.unused and not self.force:
            raise ValueError(
                f"rule {self.name!r} selects PersistentVolumeClaims without 'unused: true', "
                "so it would delete claims that running pods still mount; add "
                "'unused: true' to 'when' (or 'force: true' on the rule if you mean it)"
            )
        if self.notify and self.notify_before is None:
            raise ValueError(
                f"rule {self.name!r} names notifiers in 'notify' but has no 'notify_before'; "
                "add e.g. notify_before: 1h"
            )
        self._check_scope()
        return self

    def _check_scope(self) -> None:
        """Cluster-scoped kinds have no namespace to filter on, except Namespaces
        themselves, whose ``namespaces`` filter applies to their own names."""
        if not self.is_cluster_scoped or self.resource.is_namespace:
            return
        if self.namespaces.include != ["*"] or self.namespaces.exclude:
            raise ValueError(
                f"rule {self.name!r}: {self.resource} is cluster-scoped, so 'namespaces' "
                "cannot select anything; remove it (use label_selector or match instead)"
            )


class CleanupSettings(Section):
    dry_run: bool = True
    max_deletions_per_run: Annotated[int, Field(ge=0)] = 500
    delete_rate: Annotated[float, Field(gt=0)] = 10.0
    """Deletions per second across all workers (token bucket)."""
    events: bool = False
    ttl_annotation: str | None = "opsq.io/ttl"
    """A duration (``7d``, ``2w``; ``forever`` never expires) counted from creation."""
    expires_annotation: str | None = "opsq.io/expires"
    """An absolute time: a date (``2024-05-01``, midnight UTC) or RFC 3339."""
    janitor_annotations: bool = False
    """Also honour kube-janitor's ``janitor/ttl`` and ``janitor/expires`` (migration)."""
    audit: bool = True
    """Append every real deletion to the audit stream in Redis (``opsq cleanup audit``)."""
    audit_retention: Annotated[Duration, Field(gt=0)] = 30 * 86400.0
    """Audit entries older than this are trimmed (XADD MINID)."""
    shutdown_grace: Annotated[Duration, Field(gt=0)] = 10.0
    """`opsq watch` exits within this long after SIGTERM, even mid-request."""
    verify_with_get: bool = False
    """GET before every DELETE (TTL-controller style, 2 requests per object). Off: the
    DELETE carries the observed uid+resourceVersion as preconditions, which the server
    checks atomically; a 409 then triggers the fresh GET and re-evaluation."""
    rules: list[Rule] = Field(default_factory=list)
    kubeconfig: ExistingFile | None = None
    context: str | None = None
    page_size: Annotated[int, Field(ge=1, le=10000)] = 500
    resync: Annotated[Duration, Field(gt=0)] = 600.0
    """Informer resync: re-evaluate every cached object this often."""
    relist: Annotated[Duration, Field(gt=0)] | None = None
    """Optional periodic full relist (None: relist only on 410 Expired)."""
    watch_timeout: Annotated[Duration, Field(gt=0)] = 300.0
    """Server-side timeoutSeconds of one WATCH; the client read timeout is a bit longer."""
    request_timeout: Annotated[Duration, Field(gt=0)] = 30.0
    retries: Annotated[int, Field(ge=0, le=20)] = 5
    backoff_base: Annotated[Duration, Field(ge=0)] = 0.5
    backoff_cap: Annotated[Duration, Field(gt=0)] = 60.0
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    """Port of `opsq watch`'s /metrics, /healthz, /readyz; None: ``metrics.port``. `opsq up`
    sets it so the watcher does not collide with its other children."""

    @model_validator(mode="after")
    def _unique_rules(self) -> CleanupSettings:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} appears twice; names must be unique")
            seen.add(rule.name)
        return self

    @property
    def ttl_annotations(self) -> tuple[str, ...]:
        names = [self.ttl_annotation, "janitor/ttl" if self.janitor_annotations else None]
        return tuple(n for n in names if n)

    @property
    def expires_annotations(self) -> tuple[str, ...]:
        names = [self.expires_annotation, "janitor/expires" if self.janitor_annotations else None]
        return tuple(n for n in names if n)

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)
