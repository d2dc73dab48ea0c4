"""Least-privilege RBAC generated from the configured rules.

kube-janitor ships a ClusterRole on ``*/*``; opsq grants exactly what its rules need:

- ``get, list, watch, delete`` on each configured resource (get for the fresh read
  before a delete, list+watch for the one-shot and the informer, delete for the cleanup);
- ``list, watch`` on pods, statefulsets, deployments, daemonsets, replicasets, jobs
  and cronjobs where a PVC rule (``unused``) must know what still uses a claim;
- ``get`` on the owners the owner guard looks up for the rule's objects
  (:data:`~opsq.engines.cleanup.owners.TYPICAL_OWNERS`: a Pod's Job, ReplicaSet,
  StatefulSet, DaemonSet or ReplicationController, a Job's CronJob...), so an owned
  object is judged, not skipped as ``owner-unverifiable``;
- ``create`` on core ``events`` when ``cleanup.events`` is on or a rule has
  ``notify_before``.

Where each grant applies follows where the commands send the request. A rule that
names its namespaces is served by requests inside them; a rule with a glob lists all
namespaces at once, and a cluster-scoped kind (Namespaces, PersistentVolumes) has no
namespace at all: both can only be granted by a ClusterRole. So ``--namespaced`` emits a
Role and RoleBinding per named namespace plus a ClusterRole for what needs one, and the
default emits one ClusterRole with everything. The helm chart renders the same rules
from the same values; a test compares the two.
"""

from __future__ import annotations

from typing import Any

from opsq.core.config.cleanup import CleanupSettings, Rule
from opsq.engines.cleanup import planner
from opsq.engines.cleanup.owners import owner_kinds
from opsq.engines.cleanup.usage import REFERRERS

VERBS = ("get", "list", "watch", "delete")
READ = ("list", "watch")
EVENT_RULE = {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}
CLUSTER = ""
"""The scope key of grants that need a ClusterRole."""

Grants = dict[str, dict[tuple[str, str], list[str]]]
"""scope (a namespace, or CLUSTER) -> (apiGroup, resource) -> verbs, in first-seen order."""


def _scopes(rule: Rule) -> list[str]:
    return [CLUSTER if ns is None else ns for ns in planner.list_namespaces(rule)]


def _add(grants: Grants, scope: str, group: str, plural: str, verbs: tuple[str, ...]) -> None:
    have = grants.setdefault(scope, {}).setdefault((group, plural), [])
    have.extend(v for v in verbs if v not in have)


def needed(settings: CleanupSettings) -> Grants:
    """Every grant the commands need, by the scope the requests go to."""
    grants: Grants = {}
    announce = settings.events or any(r.notify_before for r in settings.rules)
    for rule in settings.rules:
        for scope in _scopes(rule):
            _add(grants, scope, rule.resource.group, rule.resource.plural, VERBS)
            for group, plural in owner_kinds(rule):
                _add(grants, scope, group, plural, ("get",))
            if rule.when.unused:
                for referrer in REFERRERS:
                    _add(grants, scope, referrer.resource.group, referrer.resource.plural, READ)
            if announce:
                _add(grants, scope, "", "events", ("create",))
    return grants


def _policy(resources: dict[tuple[str, str], list[str]]) -> list[dict[str, Any]]:
    return [
        {"apiGroups": [group], "resources": [plural], "verbs": list(verbs)}
        for (group, plural), verbs in resources.items()
    ]


def policy_rules(settings: CleanupSettings) -> list[dict[str, Any]]:
    """The ClusterRole's rules: every grant, whatever its scope."""
    merged: dict[tuple[str, str], list[str]] = {}
    for resources in needed(settings).values():
        for key, verbs in resources.items():
            merged.setdefault(key, []).extend(v for v in verbs if v not in merged.get(key, []))
    events = merged.pop(("", "events"), None)
    rules = _policy(merged)
    if events:
        rules.append(dict(EVENT_RULE))
    return rules


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Flatten PolicyRules into (apiGroup, resource, verb) triples for comparison."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups") or []
        for resource in rule.get("resources") or []
        for verb in rule.get("verbs") or []
    }


def manifests(
    settings: CleanupSettings,
    *,
    service_account: str,
    namespace: str,
    name: str = "opsq-cleanup",
    namespaced: bool = False,
) -> list[dict[str, Any]]:
    """One ClusterRole + binding, or (``namespaced``) Roles per namespace + a ClusterRole
    for cluster-wide and cluster-scoped grants only."""
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    if not namespaced:
        return _pair("ClusterRole", name, None, policy_rules(settings), subject)
    docs: list[dict[str, Any]] = []
    for scope, resources in needed(settings).items():
        if scope == CLUSTER:
            docs += _pair("ClusterRole", name, None, _policy(resources), subject)
        else:
            docs += _pair("Role", name, scope, _policy(resources), subject)
    return docs


def _pair(
    kind: str, name: str, scope: str | None, rules: list[dict[str, Any]], subject: dict[str, str]
) -> list[dict[str, Any]]:
    role_meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": "opsq"}}
    if scope:
        role_meta["namespace"] = scope
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": role_meta,
        "rules": rules,
    }  # fmt: skip
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": f"{kind}Binding",
        "metadata": dict(role_meta),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [dict(subject)],
    }
    return [role, binding]
