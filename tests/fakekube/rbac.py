"""Bearer-token authentication and RBAC authorization, with the server's 401/403 bodies.

Tokens map to users (a service account's user is
``system:serviceaccount:<namespace>:<name>``); permissions come from real RBAC documents
(Role, ClusterRole, RoleBinding, ClusterRoleBinding — the same YAML a Helm chart ships),
so a test can load the chart's Role and prove that exactly the verbs it grants work and
every other request gets the server's 403 message. Members of ``system:masters`` (the
admin token) may do anything. Discovery is open to every authenticated user, as the
default ``system:discovery`` ClusterRole makes it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

ADMIN_TOKEN = "fakekube-admin-token"
ADMIN_USER = "kubernetes-admin"
ANONYMOUS = "system:anonymous"


@dataclass(frozen=True)
class Rule:
    """One PolicyRule: apiGroups x resources x verbs (x resourceNames)."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    resource_names: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        return cls(
            tuple(data.get("apiGroups") or ()),
            tuple(data.get("resources") or ()),
            tuple(data.get("verbs") or ()),
            tuple(data.get("resourceNames") or ()),
        )

    def allows(self, verb: str, group: str, resource: str, sub: str, name: str | None) -> bool:
        if "*" not in self.verbs and verb not in self.verbs:
            return False
        if "*" not in self.api_groups and group not in self.api_groups:
            return False
        if not any(_resource_matches(r, resource, sub) for r in self.resources):
            return False
        return not self.resource_names or (name is not None and name in self.resource_names)


def _resource_matches(pattern: str, resource: str, sub: str) -> bool:
    if pattern == "*":
        return True
    if not sub:
        return pattern == resource
    return pattern in (f"{resource}/{sub}", f"{resource}/*", f"*/{sub}")


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Binding:
    namespace: str | None  # None: ClusterRoleBinding
    role_kind: str
    role_name: str
    subjects: tuple[tuple[str, str, str], ...]  # (kind, name, namespace)


def service_account_user(namespace: str, name: str) -> User:
    return User(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
    )


class Authorizer:
    """Tokens, roles and bindings; thread-safe because handler threads read it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.tokens: dict[str, User] = {
                ADMIN_TOKEN: User(ADMIN_USER, ("system:masters", "system:authenticated"))
            }
            self.roles: dict[tuple[str, str], list[Rule]] = {}
            self.cluster_roles: dict[str, list[Rule]] = {}
            self.bindings: list[Binding] = []

    # --------------------------------------------------------------- loading
    def add_token(self, token: str, user: User) -> None:
        with self._lock:
            self.tokens[token] = user

    def service_account_token(self, namespace: str, name: str) -> str:
        """A token authenticating as that service account (created on first use)."""
        token = f"sa-{namespace}-{name}"
        self.add_token(token, service_account_user(namespace, name))
        return token

    def grant(
        self,
        token: str,
        rules: Iterable[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        user: str | None = None,
    ) -> None:
        """Shortcut: give ``token`` these rules in ``namespace`` (None: cluster-wide)."""
        subject = User(user or f"user-{token}", ("system:authenticated",))
        with self._lock:
            existing = self.tokens.get(token)
        if existing is not None:
            subject = existing
        self.add_token(token, subject)
        role_name = f"grant-{token}-{namespace or 'cluster'}"
        parsed = [Rule.from_dict(r) for r in rules]
        with self._lock:
            if namespace:
                self.roles[(namespace, role_name)] = parsed
            else:
                self.cluster_roles[role_name] = parsed
            self.bindings.append(
                Binding(
                    namespace,
                    "Role" if namespace else "ClusterRole",
                    role_name,
                    (("User", subject.name, ""),),
                )
            )

    def load_documents(self, documents: Iterable[Mapping[str, Any]]) -> list[tuple[str, User]]:
        """Load RBAC objects; returns a (token, user) for every subject bound."""
        issued: dict[str, User] = {}
        for doc in documents:
            if not doc:
                continue
            kind, md = doc.get("kind"), doc.get("metadata") or {}
            if kind == "Role":
                self.roles[(md.get("namespace", "default"), md["name"])] = _rules(doc)
            elif kind == "ClusterRole":
                self.cluster_roles[md["name"]] = _rules(doc)
            elif kind in ("RoleBinding", "ClusterRoleBinding"):
                issued.update(self._load_binding(kind, doc))
        for token, user in issued.items():
            self.add_token(token, user)
        return sorted(issued.items())

    def load_yaml(self, text: str) -> list[tuple[str, User]]:
        return self.load_documents(d for d in yaml.safe_load_all(text) if isinstance(d, dict))

    def _load_binding(self, kind: str, doc: Mapping[str, Any]) -> dict[str, User]:
        md = doc.get("metadata") or {}
        namespace = md.get("namespace", "default") if kind == "RoleBinding" else None
        ref = doc.get("roleRef") or {}
        subjects = []
        issued: dict[str, User] = {}
        for subject in doc.get("subjects") or []:
            s_ns = subject.get("namespace") or namespace or "default"
            subjects.append((subject["kind"], subject["name"], s_ns))
            if subject["kind"] == "ServiceAccount":
                issued[f"sa-{s_ns}-{subject['name']}"] = service_account_user(s_ns, subject["name"])
            elif subject["kind"] == "User":
                issued[f"user-{subject['name']}"] = User(subject["name"], ("system:authenticated",))
        with self._lock:
            self.bindings.append(
                Binding(namespace, ref.get("kind", "Role"), ref.get("name", ""), tuple(subjects))
            )
        return issued

    # --------------------------------------------------------------- queries
    def authenticate(self, token: str | None) -> User | None:
        """None for an unknown token (401); anonymous when no token is sent."""
        if token is None:
            return User(ANONYMOUS, ("system:unauthenticated",))
        with self._lock:
            return self.tokens.get(token)

    def allowed(
        self,
        user: User,
        verb: str,
        group: str,
        resource: str,
        sub: str,
        namespace: str | None,
        name: str | None,
    ) -> bool:
        if "system:masters" in user.groups:
            return True
        with self._lock:
            rules = list(self._rules_for(user, namespace))
        return any(rule.allows(verb, group, resource, sub, name) for rule in rules)

    def _rules_for(self, user: User, namespace: str | None) -> Iterable[Rule]:
        for binding in self.bindings:
            if binding.namespace is not None and binding.namespace != namespace:
                continue
            if not any(_subject_is(user, s) for s in binding.subjects):
                continue
            if binding.role_kind == "ClusterRole":
                yield from self.cluster_roles.get(binding.role_name, [])
            elif binding.namespace is not None:
                yield from self.roles.get((binding.namespace, binding.role_name), [])


def _subject_is(user: User, subject: tuple[str, str, str]) -> bool:
    kind, name, namespace = subject
    if kind == "User":
        return user.name == name
    if kind == "Group":
        return name in user.groups
    return user.name == f"system:serviceaccount:{namespace}:{name}"


def _rules(doc: Mapping[str, Any]) -> list[Rule]:
    return [Rule.from_dict(r) for r in doc.get("rules") or []]


def forbidden_reason(
    user: User, verb: str, group: str, resource: str, sub: str, namespace: str | None
) -> str:
    """The authorizer's sentence, e.g. ``User "x" cannot delete resource "pods" in ...``."""
    full = f"{resource}/{sub}" if sub else resource
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return f'User "{user.name}" cannot {verb} resource "{full}" in API group "{group}" {scope}'
