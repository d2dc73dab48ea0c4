"""Least-privilege RBAC generated from the configured rules.

kube-janitor ships a ClusterRole on ``*/*``; opsq grants exactly what its rules need:
``get, list, watch, delete`` on each configured resource (get for the fresh read before
a delete, list+watch for the informer, delete for the cleanup) and ``create`` on core
``events`` only when ``cleanup.events`` is on. The helm chart renders the same rules
from the same values; a test compares the two and fails on any difference, in either
direction.
"""

from __future__ import annotations

from typing import Any

from opsq.core.config.cleanup import CleanupSettings

VERBS = ("get", "list", "watch", "delete")
EVENT_RULE = {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}


def policy_rules(settings: CleanupSettings) -> list[dict[str, Any]]:
    """One PolicyRule per distinct configured resource, plus events when enabled."""
    seen: dict[tuple[str, str], None] = {}
    for rule in settings.rules:
        seen.setdefault((rule.resource.group, rule.resource.plural), None)
    rules: list[dict[str, Any]] = [
        {"apiGroups": [group], "resources": [plural], "verbs": list(VERBS)}
        for group, plural in seen
    ]
    if settings.events:
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
    scope_namespace: str | None = None,
) -> list[dict[str, Any]]:
    """A ClusterRole + binding, or a Role + binding limited to *scope_namespace*."""
    kind = "Role" if scope_namespace else "ClusterRole"
    role_meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": "opsq"}}
    if scope_namespace:
        role_meta["namespace"] = scope_namespace
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": role_meta,
        "rules": policy_rules(settings),
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": f"{kind}Binding",
        "metadata": dict(role_meta),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }
    return [role, binding]
