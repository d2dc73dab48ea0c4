"""The object store: one resourceVersion counter, an event history, and the controllers.

Everything a real API server keeps in etcd and its watch cache lives here behind one
lock, which is what makes resourceVersions strictly increasing across all resources and
lets a watch start exactly where a LIST left off. Each committed change is kept in a
bounded history (old and new object), so the store can

* replay changes to a watch that starts at an old resourceVersion,
* rebuild the state at any retained resourceVersion (consistent LIST pages for a
  ``continue`` token, ``resourceVersionMatch=Exact``),
* answer 410 Expired once that version has been compacted away.

The deletion machinery follows the registry's generic store: preconditions, graceful
deletion for pods, finalizers (``orphan``/``foregroundDeletion`` added from the
propagation policy) and a garbage collector that orphans or deletes dependents by
``ownerReferences``. The controllers (garbage collector, kubelet's final delete after a
grace period, namespace controller, and the PVC/PV protection controllers that keep a
claim a pod mounts, and a volume a claim binds, from going away) run asynchronously
like the real ones; tests call :meth:`Store.settle` to wait for them deterministically.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from tests.fakekube import status as errors
from tests.fakekube.clock import Clock, format_time, parse_time
from tests.fakekube.resources import Registry, ResourceType

Obj = dict[str, Any]
TypeKey = tuple[str, str, str]

ORPHAN = "orphan"
FOREGROUND = "foregroundDeletion"
PVC_PROTECTION = "kubernetes.io/pvc-protection"
PV_PROTECTION = "kubernetes.io/pv-protection"
PVC_KEY = ("", "v1", "persistentvolumeclaims")
PV_KEY = ("", "v1", "persistentvolumes")
POD_KEY = ("", "v1", "pods")
NAMESPACE_FINALIZER = "kubernetes"
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")
_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's utilrand alphabet


@dataclass(frozen=True)
class Change:
    """One committed write, as the watch cache records it."""

    rv: int
    type_key: TypeKey
    key: str
    event: str  # ADDED / MODIFIED / DELETED
    old: Obj | None
    new: Obj


@dataclass
class DeleteOptions:
    """The fields of ``metav1.DeleteOptions`` the registry acts on."""

    grace_period_seconds: int | None = None
    propagation_policy: str | None = None
    orphan_dependents: bool | None = None
    precondition_uid: str | None = None
    precondition_rv: str | None = None
    dry_run: bool = False


@dataclass(eq=False)  # identity semantics: watchers live in a set
class Watcher:
    """An open watch: the store appends matching changes, the HTTP thread drains them."""

    type_key: TypeKey
    namespace: str | None
    pending: deque[Change] = field(default_factory=deque)
    wakeup: threading.Event = field(default_factory=threading.Event)
    closed: bool = False
    bookmark_requested: bool = False
    # A Status to send as an ERROR event before closing (expire_watches).
    error: dict[str, Any] | None = None

    def push(self, change: Change) -> None:
        self.pending.append(change)
        self.wakeup.set()

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()


def object_key(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def meta(obj: Obj) -> dict[str, Any]:
    return obj.setdefault("metadata", {})  # type: ignore[no-any-return]


class Store:
    """All objects of all resource types, versioned by one counter."""

    def __init__(self, registry: Registry, clock: Clock, *, history_limit: int = 200_000) -> None:
        self.registry = registry
        self.clock = clock
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.history_limit = history_limit
        self.rv = 0
        self.compacted_rv = 0
        self.objects: dict[TypeKey, dict[str, Obj]] = {}
        self.history: deque[Change] = deque()
        self.watchers: set[Watcher] = set()
        # uid -> (type key, object key) of live objects, and owner uid -> dependents.
        self.uids: dict[str, tuple[TypeKey, str]] = {}
        self.dependents: dict[str, set[tuple[TypeKey, str]]] = {}
        self.gc_queue: deque[tuple[TypeKey, str]] = deque()
        self.graceful: set[tuple[TypeKey, str]] = set()
        self.terminating_namespaces: set[str] = set()
        self.controllers_paused = False
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Back to a fresh cluster: only the initial namespaces exist."""
        with self.lock:
            for watcher in list(self.watchers):
                watcher.close()
            self.watchers.clear()
            self.objects.clear()
            self.history.clear()
            self.uids.clear()
            self.dependents.clear()
            self.gc_queue.clear()
            self.graceful.clear()
            self.terminating_namespaces.clear()
            self.rv = 100  # real clusters never start at 1; neither do we
            ns_type = self.registry.lookup("v1/namespaces")
            for name in INITIAL_NAMESPACES:
                self.create(ns_type, None, {"metadata": {"name": name}}, from_api=True)
            self.compacted_rv = self.rv
            self.history.clear()

    def bucket(self, rtype: ResourceType) -> dict[str, Obj]:
        return self.objects.setdefault(rtype.key, {})

    def find(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        return self.bucket(rtype).get(object_key(namespace if rtype.namespaced else None, name))

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        with self.lock:
            obj = self.find(rtype, namespace, name)
            if obj is None:
                raise errors.not_found(rtype, name)
            return obj

    def by_uid(self, uid: str) -> Obj | None:
        where = self.uids.get(uid)
        return None if where is None else self.objects[where[0]].get(where[1])

    # ------------------------------------------------------------ commit path
    def _commit(self, rtype: ResourceType, key: str, event: str, old: Obj | None, new: Obj) -> Obj:
        """Bump the counter, store or drop the object, record history, wake watchers."""
        self.rv += 1
        new = copy.deepcopy(new)
        meta(new)["resourceVersion"] = str(self.rv)
        bucket = self.bucket(rtype)
        uid = meta(new).get("uid", "")
        if event == "DELETED":
            bucket.pop(key, None)
            self.uids.pop(uid, None)
            self.graceful.discard((rtype.key, key))
            self.gc_queue.extend(self.dependents.get(uid, ()))
        else:
            bucket[key] = new
            self.uids[uid] = (rtype.key, key)
        self._index_owners(rtype, key, old, new, deleted=event == "DELETED")
        change = Change(self.rv, rtype.key, key, event, old, new)
        self.history.append(change)
        while len(self.history) > self.history_limit:
            self.compacted_rv = self.history.popleft().rv
        for watcher in self.watchers:
            if watcher.type_key == rtype.key:
                watcher.push(change)
        self.changed.notify_all()
        return new

    def _index_owners(
        self, rtype: ResourceType, key: str, old: Obj | None, new: Obj, *, deleted: bool
    ) -> None:
        ref = (rtype.key, key)
        for owner in _owner_uids(old):
            self.dependents.get(owner, set()).discard(ref)
        if deleted:
            return
        for owner in _owner_uids(new):
            self.dependents.setdefault(owner, set()).add(ref)
            if owner not in self.uids:
                self.gc_queue.append(ref)  # dangling already: the collector decides

    # ----------------------------------------------------------------- create
    def create(
        self,
        rtype: ResourceType,
        namespace: str | None,
        body: Obj,
        *,
        dry_run: bool = False,
        from_api: bool = True,
    ) -> Obj:
        """POST semantics. ``from_api=False`` is the fixture path: status kept, no ns checks."""
        with self.lock:
            obj = copy.deepcopy(body)
            md = meta(obj)
            namespace = self._request_namespace(rtype, namespace, md)
            name = self._choose_name(rtype, md)
            if rtype.namespaced:
                md["namespace"] = namespace
                self._check_namespace_accepts(namespace, from_api=from_api)
            key = object_key(namespace if rtype.namespaced else None, name)
            if key in self.bucket(rtype):
                raise errors.already_exists(rtype, name)
            self._initialise(rtype, obj, from_api=from_api)
            if dry_run:
                md.pop("resourceVersion", None)
                return obj
            return copy.deepcopy(self._commit(rtype, key, "ADDED", None, obj))

    def _request_namespace(
        self, rtype: ResourceType, namespace: str | None, md: dict[str, Any]
    ) -> str | None:
        if not rtype.namespaced:
            md.pop("namespace", None)
            return None
        body_ns = md.get("namespace")
        if namespace and body_ns and body_ns != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        return namespace or body_ns or "default"

    def _choose_name(self, rtype: ResourceType, md: dict[str, Any]) -> str:
        name = md.get("name")
        if not name and md.get("generateName"):
            suffix = "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
            name = md["name"] = f"{md['generateName']}{suffix}"
        if not name:
            raise errors.invalid(
                rtype,
                "",
                [
                    (
                        "FieldValueRequired",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    )
                ],
            )
        pattern, limit, what = (
            (_LABEL_RE, 63, "RFC 1123 label")
            if rtype.plural == "namespaces"
            else (_SUBDOMAIN_RE, 253, "RFC 1123 subdomain")
        )
        if len(name) > limit or not pattern.match(name):
            raise errors.invalid(
                rtype,
                name,
                [
                    (
                        "FieldValueInvalid",
                        "metadata.name",
                        f'Invalid value: "{name}": a lowercase {what} must consist of '
                        "lower case alphanumeric characters, '-' or '.', and must start "
                        "and end with an alphanumeric character",
                    )
                ],
            )
        return str(name)

    def _check_namespace_accepts(self, namespace: str | None, *, from_api: bool) -> None:
        ns_type = self.registry.lookup("v1/namespaces")
        ns = self.find(ns_type, None, namespace or "")
        if ns is None:
            if not from_api:
                self.create(ns_type, None, {"metadata": {"name": namespace}}, from_api=True)
                return
            raise errors.not_found(ns_type, namespace or "")
        if meta(ns).get("deletionTimestamp"):
            raise errors.ApiError(
                403,
                "Forbidden",
                f"unable to create new content in namespace {namespace} because it is being "
                "terminated",
                details={"name": namespace, "kind": "namespaces"},
            )

    def _initialise(self, rtype: ResourceType, obj: Obj, *, from_api: bool) -> None:
        md = meta(obj)
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        md["uid"] = str(uuid.uuid4())
        md["generation"] = 1
        if from_api or "creationTimestamp" not in md:
            md["creationTimestamp"] = format_time(self.clock.now())
        for transient in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            if from_api:
                md.pop(transient, None)
        if from_api and "status" in rtype.subresources:
            obj.pop("status", None)  # the status subresource owns it
        if from_api:
            _validate(rtype, obj)
        else:
            _fill_pod_templates(rtype, obj)
        _apply_defaults(rtype, obj)

    # ----------------------------------------------------------------- update
    def update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Obj,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        from_api: bool = True,
    ) -> Obj:
        """PUT semantics: optimistic concurrency on metadata.resourceVersion."""
        with self.lock:
            current = self.get(rtype, namespace, name)
            new = copy.deepcopy(body)
            md = meta(new)
            if md.get("name", name) != name:
                raise errors.bad_request(
                    f"the name of the object ({md.get('name')}) does not match the name on the "
                    f"URL ({name})"
                )
            wanted_rv = md.get("resourceVersion")
            if wanted_rv and wanted_rv != meta(current)["resourceVersion"]:
                raise errors.conflict(
                    rtype,
                    name,
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                )
            new = self._merge_for_update(rtype, current, new, subresource, from_api=from_api)
            self._check_finalizer_rules(rtype, current, new)
            if dry_run:
                meta(new)["resourceVersion"] = meta(current)["resourceVersion"]
                return new
            key = object_key(meta(current).get("namespace"), name)
            updated = self._commit(rtype, key, "MODIFIED", current, new)
            if self._should_delete_now(updated):
                self._finalize_delete(rtype, key, updated)
            return copy.deepcopy(updated)

    def _merge_for_update(
        self,
        rtype: ResourceType,
        current: Obj,
        new: Obj,
        subresource: str | None,
        *,
        from_api: bool,
    ) -> Obj:
        if subresource == "status":
            merged = copy.deepcopy(current)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            return merged
        md, cur_md = meta(new), meta(current)
        new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
        md["name"] = cur_md["name"]
        for frozen in (
            "uid",
            "creationTimestamp",
            "namespace",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if frozen in cur_md:
                md[frozen] = cur_md[frozen]
            else:
                md.pop(frozen, None)
        if from_api and "status" in rtype.subresources:
            if "status" in current:
                new["status"] = current["status"]
            else:
                new.pop("status", None)
        if _spec_part(new) != _spec_part(current):
            md["generation"] = int(cur_md.get("generation", 1)) + 1
        return new

    def _check_finalizer_rules(self, rtype: ResourceType, current: Obj, new: Obj) -> None:
        if not meta(current).get("deletionTimestamp"):
            return
        added = sorted(
            set(meta(new).get("finalizers") or []) - set(meta(current).get("finalizers") or [])
        )
        if added:
            raise errors.invalid(
                rtype,
                meta(current)["name"],
                [
                    (
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        "Forbidden: no new finalizers can be added if the object is being "
                        "deleted, "
                        f"found new finalizers {added}",
                    )
                ],
            )

    def _should_delete_now(self, obj: Obj) -> bool:
        md = meta(obj)
        if not md.get("deletionTimestamp") or md.get("finalizers"):
            return False
        return not md.get("deletionGracePeriodSeconds") or self._grace_elapsed(obj)

    def _grace_elapsed(self, obj: Obj) -> bool:
        return parse_time(meta(obj)["deletionTimestamp"]) <= self.clock.now()

    # ----------------------------------------------------------------- delete
    def delete(
        self, rtype: ResourceType, namespace: str | None, name: str, options: DeleteOptions
    ) -> tuple[Obj, bool]:
        """DELETE semantics; returns (response body, deleted-immediately)."""
        with self.lock:
            current = self.get(rtype, namespace, name)
            self._check_preconditions(rtype, current, options)
            key = object_key(meta(current).get("namespace"), name)
            if rtype.plural == "namespaces" and not rtype.group:
                return self._delete_namespace(rtype, key, current, options), False
            proposed = copy.deepcopy(current)
            md = meta(proposed)
            already_terminating = bool(md.get("deletionTimestamp"))
            self._set_gc_finalizers(rtype, proposed, options)
            grace = self._grace_period(rtype, current, options)
            if already_terminating:
                return self._delete_again(rtype, key, current, proposed, grace, options)
            if grace > 0 or md.get("finalizers"):
                moment = self.clock.now() + timedelta(seconds=grace)
                md["deletionTimestamp"] = format_time(moment)
                md["deletionGracePeriodSeconds"] = grace
                if options.dry_run:
                    return proposed, False
                updated = self._commit(rtype, key, "MODIFIED", current, proposed)
                self._track_terminating(rtype, key, updated)
                return copy.deepcopy(updated), False
            if options.dry_run:
                return self._deleted_response(rtype, current), True
            final = self._finalize_delete(rtype, key, current)
            return self._deleted_response(rtype, final), True

    def _check_preconditions(self, rtype: ResourceType, obj: Obj, options: DeleteOptions) -> None:
        md = meta(obj)
        if options.precondition_uid and options.precondition_uid != md.get("uid"):
            raise errors.conflict(
                rtype,
                md["name"],
                f"Precondition failed: UID in precondition: {options.precondition_uid}, "
                f"UID in object meta: {md.get('uid')}",
            )
        if options.precondition_rv and options.precondition_rv != md.get("resourceVersion"):
            raise errors.conflict(
                rtype,
                md["name"],
                f"Precondition failed: ResourceVersion in precondition: "
                f"{options.precondition_rv}, ResourceVersion in object meta: "
                f"{md.get('resourceVersion')}",
            )

    def _policy(self, rtype: ResourceType, options: DeleteOptions) -> str:
        if options.propagation_policy:
            return options.propagation_policy
        if options.orphan_dependents is not None:
            return "Orphan" if options.orphan_dependents else "Background"
        return rtype.default_propagation

    def _set_gc_finalizers(self, rtype: ResourceType, obj: Obj, options: DeleteOptions) -> None:
        """Add/remove ``orphan``/``foregroundDeletion`` the way the registry does."""
        md = meta(obj)
        finalizers = list(md.get("finalizers") or [])
        explicit = options.propagation_policy or options.orphan_dependents is not None
        policy = self._policy(rtype, options)
        if md.get("deletionTimestamp") and not explicit:
            return  # a repeated DELETE without a policy leaves the finalizers alone
        wanted = {"Orphan": ORPHAN, "Foreground": FOREGROUND}.get(policy)
        finalizers = [f for f in finalizers if f not in (ORPHAN, FOREGROUND) or f == wanted]
        if wanted and wanted not in finalizers:
            finalizers.append(wanted)
        if finalizers:
            md["finalizers"] = finalizers
        else:
            md.pop("finalizers", None)

    def _grace_period(self, rtype: ResourceType, obj: Obj, options: DeleteOptions) -> int:
        """Pods: requested or spec grace, but 0 when unscheduled or already finished."""
        if not rtype.graceful:
            return 0
        spec, phase = obj.get("spec") or {}, (obj.get("status") or {}).get("phase")
        if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
            return 0
        if options.grace_period_seconds is not None:
            return max(0, int(options.grace_period_seconds))
        return int(spec.get("terminationGracePeriodSeconds", 30))

    def _delete_again(
        self,
        rtype: ResourceType,
        key: str,
        current: Obj,
        proposed: Obj,
        grace: int,
        options: DeleteOptions,
    ) -> tuple[Obj, bool]:
        """DELETE of a terminating object: only a shorter grace period changes anything."""
        md = meta(proposed)
        if rtype.graceful and md.get("deletionGracePeriodSeconds", 0) > grace:
            moment = self.clock.now() + timedelta(seconds=grace)
            md["deletionTimestamp"] = format_time(moment)
            md["deletionGracePeriodSeconds"] = grace
        if proposed == current:
            return copy.deepcopy(current), False
        if options.dry_run:
            return proposed, False
        updated = self._commit(rtype, key, "MODIFIED", current, proposed)
        self._track_terminating(rtype, key, updated)
        if self._should_delete_now(updated):
            final = self._finalize_delete(rtype, key, updated)
            return self._deleted_response(rtype, final), True
        return copy.deepcopy(updated), False

    def _track_terminating(self, rtype: ResourceType, key: str, obj: Obj) -> None:
        if meta(obj).get("deletionGracePeriodSeconds"):
            self.graceful.add((rtype.key, key))
        if {ORPHAN, FOREGROUND} & set(meta(obj).get("finalizers") or []):
            self.gc_queue.append((rtype.key, key))
        self.changed.notify_all()

    def _finalize_delete(self, rtype: ResourceType, key: str, obj: Obj) -> Obj:
        return self._commit(rtype, key, "DELETED", obj, obj)

    def _deleted_response(self, rtype: ResourceType, obj: Obj) -> Obj:
        if rtype.return_deleted_object:
            return copy.deepcopy(obj)
        md = meta(obj)
        details: dict[str, Any] = {"name": md["name"]}
        if rtype.group:
            details["group"] = rtype.group
        details["kind"] = rtype.plural
        details["uid"] = md["uid"]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }

    def _delete_namespace(
        self, rtype: ResourceType, key: str, current: Obj, options: DeleteOptions
    ) -> Obj:
        if key in IMMORTAL_NAMESPACES:  # the NamespaceLifecycle admission plugin
            raise errors.forbidden(rtype, key, "this namespace may not be deleted")
        if meta(current).get("deletionTimestamp"):
            return copy.deepcopy(current)
        proposed = copy.deepcopy(current)
        meta(proposed)["deletionTimestamp"] = format_time(self.clock.now())
        meta(proposed)["deletionGracePeriodSeconds"] = 0
        proposed.setdefault("status", {})["phase"] = "Terminating"
        if options.dry_run:
            return proposed
        updated = self._commit(rtype, key, "MODIFIED", current, proposed)
        self.terminating_namespaces.add(key)
        self.changed.notify_all()
        return copy.deepcopy(updated)

    # ------------------------------------------------------------ controllers
    def reconcile(self) -> bool:
        """One pass of kubelet / garbage collector / namespace controller work."""
        with self.lock:
            did = self._expire_grace_periods()
            batch = list(dict.fromkeys(self.gc_queue))  # items re-queued run next pass
            self.gc_queue.clear()
            for type_key, key in batch:
                did = self._collect(type_key, key) or did
            for name in sorted(self.terminating_namespaces):
                did = self._terminate_namespace(name) or did
            return self._release_protection() or did

    def _release_protection(self) -> bool:
        """The storage protection controllers: drop ``pvc-protection`` from a deleted
        claim no running pod mounts, ``pv-protection`` from a volume no claim binds."""
        did = False
        for key_type, finalizer, in_use in (
            (PVC_KEY, PVC_PROTECTION, self._claim_in_use),
            (PV_KEY, PV_PROTECTION, self._volume_bound),
        ):
            rtype = self.registry.get(*key_type)
            for key, obj in list(self.objects.get(key_type, {}).items()):
                md = meta(obj)
                if rtype is None or not md.get("deletionTimestamp"):
                    continue
                if finalizer in (md.get("finalizers") or []) and not in_use(obj):
                    self._remove_finalizer(rtype, key, obj, finalizer)
                    did = True
        return did

    def _claim_in_use(self, claim: Obj) -> bool:
        namespace, name = meta(claim).get("namespace"), meta(claim).get("name")
        for pod in self.objects.get(POD_KEY, {}).values():
            if meta(pod).get("namespace") != namespace:
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            for volume in (pod.get("spec") or {}).get("volumes") or []:
                if (volume.get("persistentVolumeClaim") or {}).get("claimName") == name:
                    return True
        return False

    def _volume_bound(self, volume: Obj) -> bool:
        name = meta(volume).get("name")
        return any(
            (c.get("spec") or {}).get("volumeName") == name
            for c in self.objects.get(PVC_KEY, {}).values()
        )

    def settle(self, max_rounds: int = 1000) -> None:
        """Run the controllers until nothing is left to do (tests' deterministic wait)."""
        for _ in range(max_rounds):
            if not self.reconcile():
                return

    def _expire_grace_periods(self) -> bool:
        did = False
        for type_key, key in sorted(self.graceful):
            obj = self.objects.get(type_key, {}).get(key)
            rtype = self.registry.get(*type_key)
            if obj is None or rtype is None:
                self.graceful.discard((type_key, key))
                continue
            if not self._grace_elapsed(obj):
                continue
            self.graceful.discard((type_key, key))
            did = True
            if meta(obj).get("finalizers"):
                # The kubelet's final DELETE (grace 0) on an object finalizers still hold.
                final = copy.deepcopy(obj)
                meta(final)["deletionGracePeriodSeconds"] = 0
                self._commit(rtype, key, "MODIFIED", obj, final)
            else:
                self._finalize_delete(rtype, key, obj)
        return did

    def _collect(self, type_key: TypeKey, key: str) -> bool:
        obj = self.objects.get(type_key, {}).get(key)
        rtype = self.registry.get(*type_key)
        if obj is None or rtype is None:
            return False
        finalizers = meta(obj).get("finalizers") or []
        if meta(obj).get("deletionTimestamp") and ORPHAN in finalizers:
            return self._orphan_dependents(rtype, key, obj)
        if meta(obj).get("deletionTimestamp") and FOREGROUND in finalizers:
            return self._delete_dependents_first(rtype, key, obj)
        return self._delete_if_owners_gone(rtype, key, obj)

    def _dependents_of(self, uid: str) -> Iterator[tuple[ResourceType, str, Obj]]:
        for type_key, key in sorted(self.dependents.get(uid, set())):
            dep = self.objects.get(type_key, {}).get(key)
            rtype = self.registry.get(*type_key)
            if dep is not None and rtype is not None:
                yield rtype, key, dep

    def _orphan_dependents(self, rtype: ResourceType, key: str, owner: Obj) -> bool:
        uid = meta(owner)["uid"]
        for dep_type, dep_key, dep in list(self._dependents_of(uid)):
            orphaned = copy.deepcopy(dep)
            refs = [r for r in meta(orphaned).get("ownerReferences", []) if r.get("uid") != uid]
            if refs:
                meta(orphaned)["ownerReferences"] = refs
            else:
                meta(orphaned).pop("ownerReferences", None)
            self._commit(dep_type, dep_key, "MODIFIED", dep, orphaned)
        self._remove_finalizer(rtype, key, owner, ORPHAN)
        return True

    def _delete_dependents_first(self, rtype: ResourceType, key: str, owner: Obj) -> bool:
        uid = meta(owner)["uid"]
        pending = list(self._dependents_of(uid))
        for dep_type, _dep_key, dep in pending:
            if not meta(dep).get("deletionTimestamp"):
                self.delete(
                    dep_type,
                    meta(dep).get("namespace"),
                    meta(dep)["name"],
                    DeleteOptions(propagation_policy="Foreground"),
                )
        if any(True for _ in self._dependents_of(uid)):
            self.gc_queue.append((rtype.key, key))  # look again once they are gone
            return any(not meta(d).get("deletionTimestamp") for _, _, d in pending)
        self._remove_finalizer(rtype, key, owner, FOREGROUND)
        return True

    def _remove_finalizer(self, rtype: ResourceType, key: str, obj: Obj, finalizer: str) -> None:
        updated = copy.deepcopy(obj)
        rest = [f for f in meta(updated).get("finalizers", []) if f != finalizer]
        if rest:
            meta(updated)["finalizers"] = rest
        else:
            meta(updated).pop("finalizers", None)
        committed = self._commit(rtype, key, "MODIFIED", obj, updated)
        if self._should_delete_now(committed):
            self._finalize_delete(rtype, key, committed)

    def _delete_if_owners_gone(self, rtype: ResourceType, key: str, obj: Obj) -> bool:
        refs = meta(obj).get("ownerReferences") or []
        if not refs or meta(obj).get("deletionTimestamp"):
            return False
        alive = [r for r in refs if r.get("uid") in self.uids]
        if alive:
            if len(alive) == len(refs):
                return False
            trimmed = copy.deepcopy(obj)
            meta(trimmed)["ownerReferences"] = alive
            self._commit(rtype, key, "MODIFIED", obj, trimmed)
            return True
        self.delete(rtype, meta(obj).get("namespace"), meta(obj)["name"], DeleteOptions())
        return True

    def _terminate_namespace(self, name: str) -> bool:
        """The namespace controller: delete the content, then the namespace itself."""
        did = False
        remaining = 0
        for type_key, bucket in self.objects.items():
            rtype = self.registry.get(*type_key)
            if rtype is None or not rtype.namespaced:
                continue
            for obj in [o for k, o in bucket.items() if k.startswith(f"{name}/")]:
                remaining += 1
                if not meta(obj).get("deletionTimestamp"):
                    self.delete(
                        rtype,
                        name,
                        meta(obj)["name"],
                        DeleteOptions(propagation_policy="Background", grace_period_seconds=0),
                    )
                    did = True
        if remaining == 0:
            ns_type = self.registry.lookup("v1/namespaces")
            ns = self.find(ns_type, None, name)
            self.terminating_namespaces.discard(name)
            if ns is not None:
                self._finalize_delete(ns_type, name, ns)
            did = True
        return did

    # ------------------------------------------------------------ list/watch
    def state_at(self, rtype: ResourceType, rv: int) -> dict[str, Obj]:
        """The objects of ``rtype`` as they were at ``rv`` (410 once compacted)."""
        with self.lock:
            if rv < self.compacted_rv:
                raise errors.expired(f"too old resource version: {rv} ({self.compacted_rv})")
            state = dict(self.bucket(rtype))
            for change in reversed(self.history):
                if change.rv <= rv:
                    break
                if change.type_key != rtype.key:
                    continue
                if change.old is None:
                    state.pop(change.key, None)
                else:
                    state[change.key] = change.old
            return state

    def open_watch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        since: int | None,
        initial: Callable[[dict[str, Obj]], None] | None = None,
    ) -> Watcher:
        """Register a watcher atomically with its starting point.

        ``since=None`` means "current state as ADDED events, then changes": ``initial``
        receives the current objects under the lock so nothing slips in between.
        """
        with self.lock:
            watcher = Watcher(rtype.key, namespace)
            if since is None:
                if initial is not None:
                    initial(dict(self.bucket(rtype)))
            else:
                if since < self.compacted_rv:
                    raise errors.too_old_watch(since, self.compacted_rv)
                for change in self.history:
                    if change.rv > since and change.type_key == rtype.key:
                        watcher.pending.append(change)
            self.watchers.add(watcher)
            return watcher

    def close_watch(self, watcher: Watcher) -> None:
        with self.lock:
            self.watchers.discard(watcher)

    def compact(self, rv: int | None = None) -> int:
        """Forget history up to ``rv`` (default: everything); returns the new horizon."""
        with self.lock:
            target = self.rv if rv is None else min(rv, self.rv)
            while self.history and self.history[0].rv <= target:
                self.history.popleft()
            self.compacted_rv = max(self.compacted_rv, target)
            return self.compacted_rv


def _owner_uids(obj: Obj | None) -> list[str]:
    if obj is None:
        return []
    return [
        r["uid"] for r in (obj.get("metadata") or {}).get("ownerReferences") or [] if r.get("uid")
    ]


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


_DEFAULT_CONTAINERS = [{"name": "main", "image": "busybox"}]


def _pod_spec_path(rtype: ResourceType) -> tuple[str, ...] | None:
    if rtype.key == ("", "v1", "pods"):
        return ("spec",)
    if rtype.key == ("batch", "v1", "jobs"):
        return ("spec", "template", "spec")
    if rtype.key == ("batch", "v1", "cronjobs"):
        return ("spec", "jobTemplate", "spec", "template", "spec")
    return None


def _validate(rtype: ResourceType, obj: Obj) -> None:
    """The one validation clients trip over: pods (and pod templates) need containers."""
    path = _pod_spec_path(rtype)
    if path is None:
        return
    node: Any = obj
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or not node.get("containers"):
        raise errors.invalid(
            rtype,
            meta(obj).get("name", ""),
            [("FieldValueRequired", ".".join((*path, "containers")), "Required value")],
        )


def _fill_pod_templates(rtype: ResourceType, obj: Obj) -> None:
    """Fixture convenience: objects created directly get a container if they lack one."""
    path = _pod_spec_path(rtype)
    if path is None:
        return
    node = obj
    for part in path:
        node = node.setdefault(part, {})
    node.setdefault("containers", copy.deepcopy(_DEFAULT_CONTAINERS))
    if rtype.key != ("", "v1", "pods"):
        node.setdefault("restartPolicy", "Never")


def _apply_defaults(rtype: ResourceType, obj: Obj) -> None:
    """The handful of defaults field selectors and clients rely on."""
    if rtype.key == ("", "v1", "pods"):
        spec = obj.setdefault("spec", {})
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("serviceAccountName", "default")
        obj.setdefault("status", {}).setdefault("phase", "Pending")
    elif rtype.key == ("", "v1", "namespaces"):
        obj.setdefault("spec", {}).setdefault("finalizers", [NAMESPACE_FINALIZER])
        obj.setdefault("status", {}).setdefault("phase", "Active")
        meta(obj).setdefault("labels", {})["kubernetes.io/metadata.name"] = meta(obj)["name"]
    elif rtype.key == ("batch", "v1", "jobs"):
        _default_job(obj)
    elif rtype.key in (PVC_KEY, PV_KEY):
        # The StorageObjectInUseProtection admission plugin adds these on create.
        finalizer = PVC_PROTECTION if rtype.key == PVC_KEY else PV_PROTECTION
        finalizers = meta(obj).setdefault("finalizers", [])
        if finalizer not in finalizers:
            finalizers.append(finalizer)


def _default_job(obj: Obj) -> None:
    """What the Job registry adds: the controller-uid selector and template labels, and
    (when the Job has none) the template's labels copied onto the Job."""
    spec = obj.setdefault("spec", {})
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completions", 1)
    spec.setdefault("parallelism", 1)
    spec.setdefault("suspend", False)
    obj.setdefault("status", {})
    if spec.get("manualSelector"):
        return
    md = meta(obj)
    ids = {
        "batch.kubernetes.io/controller-uid": md["uid"],
        "batch.kubernetes.io/job-name": md["name"],
        "controller-uid": md["uid"],
        "job-name": md["name"],
    }
    spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": md["uid"]}})
    template_md = spec.setdefault("template", {}).setdefault("metadata", {})
    template_md["labels"] = {**(template_md.get("labels") or {}), **ids}
    if not md.get("labels"):
        md["labels"] = dict(template_md["labels"])
