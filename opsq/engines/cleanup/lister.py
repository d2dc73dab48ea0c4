"""Paginated LIST that survives an expired continue token.

A LIST of 10,000 Jobs in one response is a multi-megabyte allocation on both sides and
can time out; ``limit``/``continue`` fetches it in pages that the server serves from
one consistent snapshot. If the snapshot is compacted away while we page (etcd keeps
about five minutes of history), the server answers 410 Expired with no way to resume
from that token: the only correct recovery is to start the LIST again (client-go's
pager does the same, falling back to a full list).

``managedFields`` and ``spec`` are dropped from every object (client-go informers do the
same with a transform function): rules read only metadata and status, and for Jobs and
Pods the spec (the pod template) is most of the object, which matters for an informer
cache of 10,000 Jobs. Callers that need more (a ``match`` expression over the spec, the
claim references of pods) pass their own ``transform``. Items of a LIST carry no
``kind``; it is copied from the list's (``JobList`` -> ``Job``) so Events and owner
checks can name it.

Each page request is retried on 429/5xx/timeouts (:mod:`.retry`): one busy moment of
the API server must not fail a whole LIST.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from opsq.core.config.cleanup import ResourceRef
from opsq.engines.cleanup.kube import ApiUnavailable, Expired, Kube
from opsq.engines.cleanup.retry import Retrier

Obj = dict[str, Any]

MAX_RESTARTS = 5
"""Full restarts after 410 Expired before reporting the API as unavailable."""


@dataclass
class Listing:
    items: list[Obj] = field(default_factory=list)
    resource_version: str = ""
    """The collection's resourceVersion: where a WATCH continues from."""
    pages: int = 0
    restarts: int = 0


Transform = Callable[[Obj], Obj]


def slim(obj: Obj) -> Obj:
    """Drop what rules never read (``spec``, ``managedFields``) to keep caches small."""
    obj.pop("spec", None)
    return keep_spec(obj)


def keep_spec(obj: Obj) -> Obj:
    """Drop only ``managedFields`` (for rules whose ``match`` may read the spec)."""
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    return obj


def with_kind(page: Obj, obj: Obj) -> Obj:
    """Copy ``kind``/``apiVersion`` from the list onto an item that lacks them."""
    list_kind = str(page.get("kind") or "")
    if "kind" not in obj and list_kind.endswith("List"):
        obj["kind"] = list_kind[: -len("List")]
    if "apiVersion" not in obj and page.get("apiVersion"):
        obj["apiVersion"] = page["apiVersion"]
    return obj


def list_all(
    kube: Kube,
    resource: ResourceRef,
    namespace: str | None,
    *,
    page_size: int,
    label_selector: str | None = None,
    field_selector: str | None = None,
    transform: Transform = slim,
    retrier: Retrier | None = None,
) -> Listing:
    """Every object of *resource* in *namespace* (None: all), restarting on 410."""
    listing = Listing()
    retrier = retrier or Retrier(retries=0)
    for restart in range(MAX_RESTARTS + 1):
        listing = Listing(restarts=restart)
        try:
            pages = _pages(
                kube, resource, namespace, page_size=page_size,
                label_selector=label_selector, field_selector=field_selector, retrier=retrier,
            )  # fmt: skip
            for page in pages:
                listing.pages += 1
                listing.items.extend(transform(with_kind(page, o)) for o in page.get("items") or [])
                listing.resource_version = str(page.get("metadata", {}).get("resourceVersion", ""))
            return listing
        except Expired:
            continue  # the snapshot behind the continue token is gone: start over
    raise ApiUnavailable(f"LIST of {resource} expired {MAX_RESTARTS + 1} times in a row")


def _pages(
    kube: Kube,
    resource: ResourceRef,
    namespace: str | None,
    *,
    page_size: int,
    label_selector: str | None,
    field_selector: str | None,
    retrier: Retrier,
) -> Iterator[Obj]:
    token: str | None = None
    while True:
        page = retrier.call(
            lambda token=token: kube.list(  # type: ignore[misc]
                resource, namespace, limit=page_size, continue_token=token,
                label_selector=label_selector, field_selector=field_selector,
            )
        )  # fmt: skip
        yield page
        token = page.get("metadata", {}).get("continue") or None
        if not token:
            return
