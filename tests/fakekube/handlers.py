"""Request semantics that sit between HTTP and the store: discovery, LIST, WATCH filters,
DeleteOptions.

LIST follows the API concepts document: ``resourceVersion`` unset is a consistent read
of the latest state; ``"0"`` is "any" (served whole: like the watch cache, ``limit`` is
ignored); ``N`` with ``resourceVersionMatch=NotOlderThan`` (or no match and no limit)
is the latest state if it is at least N (504 "Too large resource version" otherwise);
``Exact`` (or the legacy "N with limit") is the state at N. Pages are cut in key order
and the ``continue`` token carries the snapshot's resourceVersion and the last key, in the
same base64-JSON shape the apiserver uses, so every page of one LIST shows one snapshot
and an expired token is a 410 like the real one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tests.fakekube import status as errors
from tests.fakekube.clock import parse_time
from tests.fakekube.resources import Registry, ResourceType
from tests.fakekube.selectors import (
    FieldSelector,
    LabelSelector,
    parse_field_selector,
    parse_label_selector,
)
from tests.fakekube.store import Change, DeleteOptions, Obj, Store, meta

SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-fakekube",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.22.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted "
    "between the time the first chunk was returned and now may show up in the list."
)


# ------------------------------------------------------------------ discovery
def api_versions(address: str) -> Obj:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def _group_entry(group: str, versions: list[str]) -> Obj:
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": listed, "preferredVersion": listed[0]}


def api_group_list(registry: Registry) -> Obj:
    groups = [_group_entry(g, vs) for g, vs in registry.groups().items()]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, group: str) -> Obj:
    entry = _group_entry(group, registry.groups()[group])
    return {"kind": "APIGroup", "apiVersion": "v1", **entry}


def resource_list(registry: Registry, group: str, version: str) -> Obj:
    resources: list[dict[str, object]] = []
    for rtype in registry.in_group_version(group, version):
        resources.extend(rtype.discovery_entries())
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


# ---------------------------------------------------------------- selectors
@dataclass(frozen=True)
class Filter:
    """Namespace + label + field selection shared by LIST and WATCH."""

    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector

    @classmethod
    def from_query(
        cls, rtype: ResourceType, namespace: str | None, query: Mapping[str, str]
    ) -> Filter:
        return cls(
            namespace,
            parse_label_selector(query.get("labelSelector")),
            parse_field_selector(query.get("fieldSelector"), rtype),
        )

    @property
    def selects_all(self) -> bool:
        return self.labels.empty and self.fields.empty

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        md = obj.get("metadata") or {}
        if self.namespace is not None and md.get("namespace") != self.namespace:
            return False
        return self.labels.matches(md.get("labels")) and self.fields.matches(obj)


# --------------------------------------------------------------------- LIST
def encode_continue(rv: int, last_key: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": last_key + "\x00"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        rv, start = int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise errors.bad_request(f"continue key is not valid: {exc}") from exc
    if data.get("v") != "meta.k8s.io/v1" or rv <= 0:
        raise errors.bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion "
            "(version meta.k8s.io/v1)"
        )
    return rv, start


def int_param(query: Mapping[str, str], name: str) -> int | None:
    """An integer query parameter (absent or empty: None; garbage: 400)."""
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise errors.bad_request(f"invalid value for {name}: {value!r}") from exc


def _snapshot(
    store: Store, rtype: ResourceType, query: Mapping[str, str]
) -> tuple[dict[str, Obj], int, str, int]:
    """(objects, snapshot rv, start key, effective limit) for a LIST request."""
    limit = max(0, int_param(query, "limit") or 0)
    token = query.get("continue") or ""
    rv_param = query.get("resourceVersion") or ""
    match = query.get("resourceVersionMatch") or ""
    if token:
        if rv_param and rv_param != "0":
            raise errors.bad_request(
                "specifying resource version is not allowed when using continue"
            )
        rv, start = decode_continue(token)
        try:
            return store.state_at(rtype, rv), rv, start, limit
        except errors.ApiError as exc:
            fresh = encode_continue(store.rv, start[:-1])
            raise errors.expired(CONTINUE_TOO_OLD, continue_token=fresh) from exc
    if match and not rv_param:
        raise errors.bad_request(
            "resourceVersionMatch is forbidden unless resourceVersion is provided"
        )
    if match not in ("", "Exact", "NotOlderThan"):
        raise errors.bad_request(f'resourceVersionMatch: Unsupported value: "{match}"')
    with store.lock:
        current = store.rv
        if rv_param == "0":
            return dict(store.bucket(rtype)), current, "", 0
        if rv_param and (match == "Exact" or (not match and limit)):
            wanted = int_param(query, "resourceVersion") or 0
            if wanted > current:
                raise _too_large(wanted, current)
            try:
                return store.state_at(rtype, wanted), wanted, "", limit
            except errors.ApiError as exc:
                raise errors.expired(
                    "The resourceVersion for the provided list is too old."
                ) from exc
        if rv_param and (int_param(query, "resourceVersion") or 0) > current:
            raise _too_large(int(rv_param), current)
        return dict(store.bucket(rtype)), current, "", limit


def _too_large(wanted: int, current: int) -> errors.ApiError:
    return errors.ApiError(
        504,
        "Timeout",
        f"Too large resource version: {wanted}, current: {current}",
        details={
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
    )


def list_objects(
    store: Store, rtype: ResourceType, namespace: str | None, query: Mapping[str, str]
) -> Obj:
    """A LIST response body (``PodList`` ...), one page of it when ``limit`` is set."""
    selection = Filter.from_query(rtype, namespace, query)
    objects, rv, start, limit = _snapshot(store, rtype, query)
    keys = sorted(k for k in objects if k > start)
    if namespace is not None:
        keys = [k for k in keys if k.startswith(f"{namespace}/")]
    items: list[Obj] = []
    consumed = 0
    for key in keys:
        if limit and len(items) >= limit:
            break
        consumed += 1
        if selection.matches(objects[key]):
            items.append(objects[key])
    list_meta: dict[str, Any] = {"resourceVersion": str(rv)}
    remaining = len(keys) - consumed
    if limit and remaining > 0 and items:
        list_meta["continue"] = encode_continue(rv, keys[consumed - 1])
        if selection.selects_all:
            list_meta["remainingItemCount"] = remaining
    return {
        "kind": rtype.list_kind,
        "apiVersion": rtype.api_version,
        "metadata": list_meta,
        "items": [_list_item(rtype, item) for item in items],
    }


def _list_item(rtype: ResourceType, obj: Obj) -> Obj:
    # Built-in lists carry kind/apiVersion once, on the list; custom resources keep them.
    if rtype.custom:
        return obj
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


# -------------------------------------------------------------------- WATCH
def watch_event(selection: Filter, change: Change) -> tuple[str, Obj] | None:
    """What a filtered watch sees for one change (objects entering/leaving the selection
    turn into ADDED/DELETED, as the watch cache does)."""
    if change.event == "DELETED":
        return ("DELETED", change.new) if selection.matches(change.new) else None
    now_in = selection.matches(change.new)
    was_in = selection.matches(change.old)
    if change.event == "ADDED" or not was_in:
        return ("ADDED", change.new) if now_in else None
    return ("MODIFIED", change.new) if now_in else ("DELETED", change.new)


def bookmark(rtype: ResourceType, rv: int, *, initial_events_end: bool = False) -> Obj:
    md: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
    if initial_events_end:
        md["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": md}


# ------------------------------------------------------------ DeleteOptions
def dry_run_requested(query: Mapping[str, str], body: Obj | None) -> bool:
    values = [query["dryRun"]] if query.get("dryRun") else []
    values += list((body or {}).get("dryRun") or [])
    for value in values:
        if value != "All":
            raise errors.bad_request(f'Invalid value: "{value}": supported values: "All"')
    return bool(values)


def delete_options(query: Mapping[str, str], body: Obj | None) -> DeleteOptions:
    body = body or {}
    pre = body.get("preconditions") or {}
    grace = int_param(query, "gracePeriodSeconds")
    if grace is None and body.get("gracePeriodSeconds") is not None:
        grace = int(body["gracePeriodSeconds"])
    policy = query.get("propagationPolicy") or body.get("propagationPolicy")
    if policy not in (None, "Orphan", "Background", "Foreground"):
        raise errors.bad_request(
            f'propagationPolicy: Unsupported value: "{policy}": supported values: "Foreground", '
            '"Background", "Orphan", "nil"'
        )
    orphan = query.get("orphanDependents")
    orphan_flag = body.get("orphanDependents") if orphan is None else orphan in ("true", "1")
    if policy and orphan_flag is not None:
        raise errors.ApiError(
            422,
            "Invalid",
            'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Invalid value: '
            f'"{policy}": orphanDependents and deletionPropagation cannot be both set',
        )
    return DeleteOptions(
        grace_period_seconds=grace,
        propagation_policy=policy,
        orphan_dependents=orphan_flag,
        precondition_uid=pre.get("uid"),
        precondition_rv=pre.get("resourceVersion"),
        dry_run=dry_run_requested(query, body),
    )


def delete_collection(
    store: Store,
    rtype: ResourceType,
    namespace: str | None,
    query: Mapping[str, str],
    body: Obj | None,
) -> Obj:
    """DELETE on a collection: each selected object deleted with the same options."""
    options = delete_options(query, body)
    listing = list_objects(
        store,
        rtype,
        namespace,
        {k: v for k, v in query.items() if k in ("labelSelector", "fieldSelector")},
    )
    deleted = []
    for item in listing["items"]:
        md = meta(item)
        try:
            out, _ = store.delete(rtype, md.get("namespace"), md["name"], options)
        except errors.ApiError as exc:
            if exc.code != 404:
                raise
            continue
        deleted.append(_list_item(rtype, out) if out.get("kind") != "Status" else item)
    return {**listing, "items": deleted}


# ------------------------------------------------------------ Table (kubectl)
def wants_table(accept: str) -> bool:
    """kubectl asks for server-side printing with ``Accept: ...;as=Table;...``."""
    return any("as=Table" in part for part in accept.split(","))


def human_age(seconds: float) -> str:
    """k8s.io/apimachinery duration.HumanDuration, in short."""
    s = max(0, int(seconds))
    steps = (
        (120, f"{s}s"),
        (600, f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"),
        (3 * 3600, f"{s // 60}m"),
        (8 * 3600, f"{s // 3600}h{(s // 60) % 60}m" if (s // 60) % 60 else f"{s // 3600}h"),
        (48 * 3600, f"{s // 3600}h"),
        (8 * 86400, f"{s // 86400}d{(s // 3600) % 24}h" if (s // 3600) % 24 else f"{s // 86400}d"),
        (2 * 365 * 86400, f"{s // 86400}d"),
    )
    return next((text for limit, text in steps if s < limit), f"{s // (365 * 86400)}y")


def as_table(
    rtype: ResourceType, items: list[Obj], list_meta: Obj, now: datetime, include: str
) -> Obj:
    """A ``meta.k8s.io/v1`` Table with Name, (pods: Status,) Age columns."""
    columns: list[Obj] = [
        {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}
    ]
    if rtype.key == ("", "v1", "pods"):
        columns.append(
            {
                "name": "Status",
                "type": "string",
                "format": "",
                "description": "Phase",
                "priority": 0,
            }
        )
    columns.append(
        {"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}
    )
    rows = []
    for item in items:
        md = item.get("metadata") or {}
        created = md.get("creationTimestamp")
        age = human_age((now - parse_time(created)).total_seconds()) if created else "<unknown>"
        cells: list[Any] = [md.get("name", "")]
        if rtype.key == ("", "v1", "pods"):
            cells.append((item.get("status") or {}).get("phase", ""))
        cells.append(age)
        row: Obj = {"cells": cells}
        if include == "Object":
            row["object"] = {"kind": rtype.kind, "apiVersion": rtype.api_version, **item}
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": md,
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    }
