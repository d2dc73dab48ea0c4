"""Unit tests of the fake's building blocks: RBAC rule matching, selectors, patches."""

from __future__ import annotations

import pytest

from tests.fakekube.patch import json_patch, merge_patch, strategic_merge_patch
from tests.fakekube.rbac import Authorizer, User, service_account_user
from tests.fakekube.resources import Registry
from tests.fakekube.selectors import parse_field_selector, parse_label_selector
from tests.fakekube.status import ApiError

BINDINGS = """
kind: ClusterRole
apiVersion: rbac.authorization.k8s.io/v1
metadata: {name: reader}
rules:
  - {apiGroups: [""], resources: ["pods", "pods/log"], verbs: ["get", "list"]}
  - {apiGroups: ["batch"], resources: ["jobs"], verbs: ["delete"], resourceNames: ["only-this"]}
---
kind: RoleBinding
apiVersion: rbac.authorization.k8s.io/v1
metadata: {name: reader-in-a, namespace: a}
roleRef: {kind: ClusterRole, name: reader}
subjects: [{kind: ServiceAccount, name: bot, namespace: ops}]
---
kind: ClusterRoleBinding
apiVersion: rbac.authorization.k8s.io/v1
metadata: {name: everyone-reads}
roleRef: {kind: ClusterRole, name: reader}
subjects: [{kind: Group, name: readers}]
"""


@pytest.fixture
def auth() -> Authorizer:
    authorizer = Authorizer()
    authorizer.load_yaml(BINDINGS)
    return authorizer


def test_cluster_role_bound_by_role_binding_applies_only_in_that_namespace(
    auth: Authorizer,
) -> None:
    """A RoleBinding to a ClusterRole grants its rules in the binding's namespace only."""
    bot = service_account_user("ops", "bot")
    assert auth.allowed(bot, "list", "", "pods", "", "a", None)
    assert not auth.allowed(bot, "list", "", "pods", "", "b", None)
    assert not auth.allowed(bot, "list", "", "pods", "", None, None)


def test_subresources_and_resource_names_are_separate_grants(auth: Authorizer) -> None:
    """pods/log needs its own entry; resourceNames limit a verb to named objects."""
    bot = service_account_user("ops", "bot")
    assert auth.allowed(bot, "get", "", "pods", "log", "a", "p")
    assert not auth.allowed(bot, "get", "", "pods", "exec", "a", "p")
    assert auth.allowed(bot, "delete", "batch", "jobs", "", "a", "only-this")
    assert not auth.allowed(bot, "delete", "batch", "jobs", "", "a", "other")


def test_group_subjects_and_cluster_role_bindings_apply_everywhere(auth: Authorizer) -> None:
    """A ClusterRoleBinding to a group reaches every namespace and the cluster scope."""
    reader = User("alice", ("readers",))
    assert auth.allowed(reader, "list", "", "pods", "", None, None)
    assert auth.allowed(reader, "get", "", "pods", "", "z", "p")
    assert not auth.allowed(User("bob", ()), "get", "", "pods", "", "z", "p")


def test_load_yaml_issues_a_token_per_bound_subject() -> None:
    """Service accounts in bindings get a deterministic token for kubeconfigs."""
    issued = Authorizer().load_yaml(BINDINGS)
    assert [(token, user.name) for token, user in issued] == [
        ("sa-ops-bot", "system:serviceaccount:ops:bot")
    ]


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("a=1,b!=2", {"a": "1", "b": "3"}, True),
        ("a=1,b!=2", {"a": "1", "b": "2"}, False),
        ("app.kubernetes.io/name in (x,y)", {"app.kubernetes.io/name": "y"}, True),
        ("!gone", {"here": ""}, True),
        ("empty=", {"empty": ""}, True),
        ("n<5", {"n": "10"}, False),
    ],
)
def test_label_selector_matching(text: str, labels: dict[str, str], expected: bool) -> None:
    """Equality, set-based, existence and numeric requirements combine with AND."""
    assert parse_label_selector(text).matches(labels) is expected


def test_field_selector_escapes_and_negation() -> None:
    """Backslash escapes commas and equals signs in values; != negates."""
    pods = Registry().lookup("v1/pods")
    selector = parse_field_selector(r"metadata.name=a\,b,status.phase!=Running", pods)
    assert selector.matches({"metadata": {"name": "a,b"}, "status": {"phase": "Failed"}})
    assert not selector.matches({"metadata": {"name": "a,b"}, "status": {"phase": "Running"}})


def test_field_selector_on_custom_resource_names_the_allowed_fields() -> None:
    """Custom resources answer with the apiextensions wording and the allowed list."""
    registry = Registry()
    widgets = registry.register_crd("example.com", "v1", "widgets", "Widget")
    with pytest.raises(ApiError) as err:
        parse_field_selector("spec.size=1", widgets)
    assert err.value.message == (
        '"spec.size" is not a known field selector: only "metadata.name", "metadata.namespace"'
    )


def test_patch_formats() -> None:
    """Merge patch replaces lists; strategic merge merges by key; JSON patch ops apply in order."""
    doc = {"metadata": {"finalizers": ["a"], "ownerReferences": [{"uid": "1", "name": "x"}]}}
    assert merge_patch(doc, {"metadata": {"finalizers": ["b"]}})["metadata"]["finalizers"] == ["b"]
    merged = strategic_merge_patch(
        doc, {"metadata": {"ownerReferences": [{"uid": "1", "$patch": "delete"}, {"uid": "2"}]}}
    )
    assert merged["metadata"]["ownerReferences"] == [{"uid": "2"}]
    patched = json_patch(
        doc,
        [
            {"op": "test", "path": "/metadata/finalizers/0", "value": "a"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
            {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}},
            {"op": "move", "from": "/metadata/labels", "path": "/metadata/annotations"},
        ],
    )
    assert patched["metadata"]["finalizers"] == []
    assert patched["metadata"]["annotations"] == {"k": "v"}
    with pytest.raises(ApiError):
        json_patch(doc, [{"op": "test", "path": "/metadata/finalizers/0", "value": "zzz"}])
