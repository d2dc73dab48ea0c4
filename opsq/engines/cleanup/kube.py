"""The one door to the Kubernetes API: raw resource paths, JSON dicts, typed errors.

Why not the generated ``BatchV1Api``/``CoreV1Api`` classes: cleanup rules name any
resource, including CRDs that have no generated class, so every request goes through
``ApiClient.call_api`` on a resource path (``/apis/{group}/{version}/namespaces/{ns}/
{plural}/{name}``). Responses stay plain dicts: the planner only reads a few fields,
and deserialising 10,000 Jobs into model objects costs more than the cleanup itself.

Errors are translated here, where they enter (``raise ... from exc``):

======  =========================================================
404     :class:`NotFound` (the executor treats it as "already gone")
409     :class:`Conflict` (precondition failed: re-plan on a fresh GET)
410     :class:`Expired` (continue token or watch resourceVersion too old: relist)
401     :class:`Unauthorized` (credentials rejected: the run cannot go on, exit 3)
403     :class:`Forbidden`, a PermanentError naming verb, resource and namespace
429/5xx :class:`ApiUnavailable`, a TemporaryError carrying Retry-After as its delay
timeout :class:`ApiUnavailable` (connection refused, read timeout, reset)
other   :class:`ApiRejected` (a PermanentError with the server's message)
======  =========================================================

Every request is counted in ``opsq_kube_api_requests_total{verb,code}``, and in
:attr:`Kube.requests` so the benchmark can read the cost of a strategy in-process.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from opsq.core.config.base import default_of
from opsq.core.config.cleanup import CleanupSettings, ResourceRef
from opsq.core.errors import ConfigError, OpsqError, PermanentError, TemporaryError
from opsq.core.metrics.cleanup import KUBE_API_REQUESTS

Obj = dict[str, Any]
Query = list[tuple[str, str]]


class NotFound(OpsqError):
    """404: the object (or namespace) does not exist."""


class Conflict(OpsqError):
    """409: a precondition (uid, resourceVersion) did not match the stored object."""


class Expired(OpsqError):
    """410: the continue token or resourceVersion is older than the server keeps."""


class Forbidden(PermanentError):
    """403 from RBAC: retrying cannot help until the Role changes."""


class Unauthorized(PermanentError):
    """401: the credentials were rejected (an expired token): no request can succeed."""


class ApiRejected(PermanentError):
    """Another 4xx (422 invalid, 400 bad request): the request itself is wrong."""


class ApiUnavailable(TemporaryError):
    """429, 5xx, timeouts and connection failures: retry later."""


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ApiClient the standard way: --kubeconfig, KUBECONFIG, in-cluster, ~/.kube/config."""
    configuration = k8s_client.Configuration()
    try:
        if (
            kubeconfig
            or os.environ.get("KUBECONFIG")
            or "KUBERNETES_SERVICE_HOST" not in os.environ
        ):
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        else:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "in-cluster/~/.kube/config"
        raise ConfigError(
            f"cannot load Kubernetes credentials from {where}: {exc} "
            "(fix: pass --kubeconfig, set KUBECONFIG, or run in a pod with a service account)"
        ) from exc
    # urllib3 would otherwise retry 429/503 by itself (sleeping Retry-After) behind our
    # back: retries, their backoff and their metrics belong to the executor. Only
    # connection attempts that never reached the server are retried here.
    configuration.retries = urllib3.Retry(
        total=2, connect=2, read=0, status=0, other=0, redirect=False,
        respect_retry_after_header=False, raise_on_status=False,
    )  # fmt: skip
    return k8s_client.ApiClient(configuration)


def resource_path(resource: ResourceRef, namespace: str | None = None, name: str = "") -> str:
    """The REST path of a collection (``name`` empty) or of one object."""
    root = (
        f"/apis/{resource.group}/{resource.version}"
        if resource.group
        else f"/api/{resource.version}"
    )
    ns = f"/namespaces/{quote(namespace, safe='')}" if namespace else ""
    tail = f"/{quote(name, safe='')}" if name else ""
    return f"{root}{ns}/{resource.plural}{tail}"


def _status_message(body: str | bytes | None) -> str:
    """The ``message`` of a Kubernetes Status body, or the raw text."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        doc = json.loads(text)
    except ValueError:
        return text[:300]
    return str(doc.get("message", text[:300])) if isinstance(doc, dict) else text[:300]


def _retry_after(headers: Any) -> float | None:
    """Retry-After in seconds; None when absent or not a finite non-negative number (an
    HTTP date, ``inf``). Callers cap it at their backoff cap: a proxy's ``3600`` must not
    stall a run for hours."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < math.inf else None


class Kube:
    """Thin, counted, error-translating access to resource paths."""

    def __init__(
        self,
        api_client: Any,
        *,
        request_timeout: float = default_of(CleanupSettings, "request_timeout"),
    ) -> None:
        self.api = api_client
        self.request_timeout = request_timeout
        self.requests: Counter[str] = Counter()
        """verb -> count, for benchmarks and tests that assert on API cost."""

    @classmethod
    def connect(
        cls, kubeconfig: str | None = None, context: str | None = None, **kwargs: Any
    ) -> Kube:
        return cls(load_api_client(kubeconfig, context), **kwargs)

    def close(self) -> None:
        """Close pooled connections (long-running processes keep one Kube for life)."""
        self.api.close()

    # --- verbs -----------------------------------------------------------------------

    def get(self, resource: ResourceRef, namespace: str | None, name: str) -> Obj:
        path = resource_path(resource, namespace, name)
        return self._json("get", "GET", path, [], resource=resource, namespace=namespace)

    def list(
        self,
        resource: ResourceRef,
        namespace: str | None,
        *,
        limit: int,
        continue_token: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Obj:
        query: Query = [("limit", str(limit))]
        if continue_token:
            query.append(("continue", continue_token))
        query += _selectors(label_selector, field_selector)
        path = resource_path(resource, namespace)
        return self._json("list", "GET", path, query, resource=resource, namespace=namespace)

    def delete(
        self,
        resource: ResourceRef,
        namespace: str | None,
        name: str,
        *,
        uid: str,
        resource_version: str | None,
        propagation_policy: str,
        grace_period_seconds: int | None,
        dry_run: bool,
    ) -> Obj:
        """DELETE with preconditions; the body is a DeleteOptions."""
        preconditions = {"uid": uid}
        if resource_version:
            preconditions["resourceVersion"] = resource_version
        body: Obj = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": propagation_policy,
            "preconditions": preconditions,
        }
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        # dryRun also in the query: the server honours either, and a proxy that logs
        # only URLs then shows the request was harmless.
        query: Query = [("dryRun", "All")] if dry_run else []
        if dry_run:
            body["dryRun"] = ["All"]
        path = resource_path(resource, namespace, name)
        return self._json(
            "delete", "DELETE", path, query, body=body, resource=resource, namespace=namespace
        )

    def discovery(self, path: str) -> Obj:
        """A discovery document (``/api/v1``, ``/apis/batch/v1``)."""
        root = ResourceRef(group="", version="v1", plural="discovery")
        return self._json("get", "GET", path, [], resource=root, namespace=None)

    def create_event(self, namespace: str, event: Obj) -> Obj:
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/events"
        events = ResourceRef(group="", version="v1", plural="events")
        return self._json(
            "create", "POST", path, [], body=event, resource=events, namespace=namespace
        )

    def watch(
        self,
        resource: ResourceRef,
        namespace: str | None,
        *,
        resource_version: str,
        timeout_seconds: int,
        read_timeout: float,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Iterator[Obj]:
        """Yield watch events (dicts with ``type`` and ``object``) until the stream ends.

        ``timeout_seconds`` asks the server to end the watch; ``read_timeout`` is the
        client's own guard against a half-open connection that would otherwise block
        forever (a silent network partition never closes the socket).
        """
        query: Query = [
            ("watch", "1"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        query += _selectors(label_selector, field_selector)
        path = resource_path(resource, namespace)
        response = self._send(
            "watch", "GET", path, query, body=None, timeout=(self.request_timeout, read_timeout),
            resource=resource, namespace=namespace,
        )  # fmt: skip
        ended = False
        try:
            yield from _stream_lines(response.response)
            ended = True
        except urllib3.exceptions.HTTPError as exc:
            raise ApiUnavailable(f"watch of {resource} interrupted: {exc}") from exc
        finally:
            # Only a stream read to its end may go back to the pool: one left early
            # (stop, a 410 ERROR event) still carries unread chunks that the next
            # request on that connection would read as its own response.
            with contextlib.suppress(Exception):
                if ended:
                    response.response.release_conn()
                else:
                    response.response.close()

    # --- plumbing --------------------------------------------------------------------

    @property
    def host(self) -> str:
        return str(getattr(getattr(self.api, "configuration", None), "host", "") or "?")

    def _unreachable(self, exc: BaseException) -> str:
        """One line for a connection failure (urllib3's MaxRetryError repr is a page)."""
        cause: BaseException = exc
        while isinstance(cause, urllib3.exceptions.MaxRetryError) and cause.reason is not None:
            cause = cause.reason
        text = str(cause)
        if isinstance(cause, urllib3.exceptions.NewConnectionError):
            text = text.rpartition(": ")[2] or text
        elif isinstance(cause, urllib3.exceptions.ReadTimeoutError):
            text = "read timed out"
        elif isinstance(cause, urllib3.exceptions.ConnectTimeoutError):
            text = "connection timed out"
        return f"cannot reach the API server at {self.host}: {text}"

    def _json(
        self,
        verb: str,
        method: str,
        path: str,
        query: Query,
        *,
        resource: ResourceRef,
        namespace: str | None,
        body: Obj | None = None,
    ) -> Obj:
        response = self._send(
            verb, method, path, query, body=body, timeout=self.request_timeout,
            resource=resource, namespace=namespace,
        )  # fmt: skip
        try:
            data = response.read()
            doc = json.loads(data) if data else {}
        except (urllib3.exceptions.HTTPError, ValueError) as exc:
            raise ApiUnavailable(f"{verb} {path}: unreadable response: {exc}") from exc
        if not isinstance(doc, dict):
            raise ApiUnavailable(f"{verb} {path}: response is not a JSON object")
        return doc

    def _send(
        self,
        verb: str,
        method: str,
        path: str,
        query: Query,
        *,
        body: Obj | None,
        timeout: float | tuple[float, float],
        resource: ResourceRef,
        namespace: str | None,
    ) -> Any:
        self.requests[verb] += 1
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        try:
            request = self.api.param_serialize(
                method, path, query_params=query or None, header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )  # fmt: skip
            response = self.api.call_api(*request, _request_timeout=timeout)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            KUBE_API_REQUESTS.labels(verb, "error").inc()
            raise ApiUnavailable(f"{verb} {path}: {self._unreachable(exc)}") from exc
        except ApiException as exc:  # SSL errors surface as status 0
            KUBE_API_REQUESTS.labels(verb, "error").inc()
            raise ApiUnavailable(f"{verb} {path}: {exc.reason}") from exc
        KUBE_API_REQUESTS.labels(verb, str(response.status)).inc()
        if not 200 <= response.status <= 299:
            _raise_for(verb, response, resource=resource, namespace=namespace)
        return response


def _selectors(label_selector: str | None, field_selector: str | None) -> Query:
    query: Query = []
    if label_selector:
        query.append(("labelSelector", label_selector))
    if field_selector:
        query.append(("fieldSelector", field_selector))
    return query


def _raise_for(verb: str, response: Any, *, resource: ResourceRef, namespace: str | None) -> None:
    status = int(response.status)
    message = _status_message(response.read())
    where = (
        f"{resource} in namespace {namespace!r}" if namespace else f"{resource} (all namespaces)"
    )
    if status == 404:
        raise NotFound(f"{verb} {where}: not found: {message}")
    if status == 409:
        raise Conflict(f"{verb} {where}: conflict: {message}")
    if status == 410:
        raise Expired(f"{verb} {where}: expired: {message}")
    if status == 401:
        raise Unauthorized(
            f"{verb} {where}: the API server rejected the credentials (HTTP 401: {message}) "
            "(fix: refresh the token or client certificate in the kubeconfig, or the pod's "
            "service account token; nothing was deleted)"
        )
    if status == 403:
        raise Forbidden(
            f"forbidden: cannot {verb} {where}: {message} ({_rbac_fix(verb, resource, namespace)})"
        )
    if status == 429 or status >= 500:
        delay = _retry_after(response.headers)
        raise ApiUnavailable(f"{verb} {where}: HTTP {status}: {message}", delay=delay)
    raise ApiRejected(f"{verb} {where}: HTTP {status}: {message}")


def _rbac_fix(verb: str, resource: ResourceRef, namespace: str | None) -> str:
    """The fix for a 403, worded for where the request went: a request across all
    namespaces (or on a cluster-scoped kind) needs a ClusterRole, never a Role."""
    grant = f"verb {verb!r} on {resource.plural!r} in API group {resource.group or 'core'!r}"
    if namespace is None:
        return (
            f"fix: grant {grant} in a ClusterRole bound with a ClusterRoleBinding; a Role "
            "cannot grant a request across all namespaces or on a cluster-scoped kind. "
            "`opsq cleanup rbac` (or --namespaced) prints one"
        )
    return (
        f"fix: grant {grant} in namespace {namespace!r} (a Role there, or a ClusterRole); "
        "`opsq cleanup rbac --namespaced` prints it"
    )


def _stream_lines(raw: Any) -> Iterator[Obj]:
    """Newline-delimited JSON events from a chunked watch response."""
    buffer = b""
    for chunk in raw.stream(amt=None, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield _watch_event(line)
    if buffer.strip():
        yield _watch_event(buffer)


def _watch_event(line: bytes) -> Obj:
    """One event; a line that is not JSON is a stream cut mid-event (a proxy or API
    server restart ending the chunked body), which re-watching from the last seen
    resourceVersion repairs. A ValueError here would end the informer thread."""
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise ApiUnavailable(f"watch stream ended mid-event: {line[:80]!r}") from exc
    if not isinstance(event, dict):
        raise ApiUnavailable(f"watch event is not a JSON object: {line[:80]!r}")
    return event
