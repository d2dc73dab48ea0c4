"""The HTTP server: a threaded ``http.server`` speaking the Kubernetes REST protocol.

Why stdlib ``ThreadingHTTPServer``: every request (and every long-lived watch stream)
gets its own thread, so a watch blocked on its queue never holds up a LIST or DELETE,
and there is no event loop to share with the code under test. HTTP/1.1 keep-alive is on
(the kubernetes client pools connections); watches answer with chunked transfer
encoding and one JSON event per line, exactly what ``kubernetes.watch.Watch`` parses.

:class:`FakeKube` is both the server and the test-facing control surface: direct store
access (``create``/``get``/``list``/``patch``/``delete`` without HTTP), the clock,
``compact()``, ``break_watches()``, ``inject_fault()``, ``settle()``, RBAC set-up,
request accounting, and kubeconfig / ``ApiClient`` factories.
"""

from __future__ import annotations

import base64
import builtins
import copy
import json
import re
import select
import socket
import ssl
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import trustme
import yaml

from tests.fakekube import handlers
from tests.fakekube import status as errors
from tests.fakekube.clock import Clock, format_time
from tests.fakekube.patch import apply_patch
from tests.fakekube.rbac import ADMIN_TOKEN, Authorizer, User, forbidden_reason
from tests.fakekube.resources import Registry, ResourceType
from tests.fakekube.routing import TRUE_VALUES, Route, parse_path, rbac_verb
from tests.fakekube.store import Change, DeleteOptions, Obj, Store, Watcher, meta

DEFAULT_WATCH_TIMEOUT = 1800.0  # the apiserver's minimum request timeout for watches
IDLE_TICK = 0.2  # how often an idle watch checks for bookmarks, closure, disconnects


@dataclass
class Fault:
    """An injected failure: the next ``count`` matching requests get ``status``.

    ``status=0`` drops the connection without an answer (a load balancer reset);
    ``delay`` holds the request that long first (a slow server, for client timeouts) and,
    with ``status=200``, then serves it normally.
    """

    status: int
    verb: str | None = None
    resource: str | None = None
    path: str | None = None
    count: int | None = 1
    retry_after: int | None = None
    delay: float = 0.0
    hits: int = 0

    def matches(self, verb: str, resource: str, path: str) -> bool:
        if self.count is not None and self.hits >= self.count:
            return False
        if self.verb and self.verb != verb:
            return False
        if self.resource and self.resource not in (resource, resource.split(".", maxsplit=1)[0]):
            return False
        return not (self.path and not re.search(self.path, path))


@dataclass(frozen=True)
class RequestRecord:
    """One served request, for assertions and the benchmark's requests-per-object."""

    method: str
    verb: str
    resource: str  # "pods", "jobs.batch", "pods/log"; "" for non-resource paths
    namespace: str | None
    name: str | None
    code: int
    query: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False


class FakeKube:
    """A fake Kubernetes API server on 127.0.0.1, plus its control API for tests."""

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        bookmark_interval: float = 60.0,
        tls: bool = False,
    ) -> None:
        """``tls=True`` serves HTTPS with a throw-away CA (kubectl sends tokens only over
        TLS); plain HTTP is the default because tests do not need the handshakes."""
        self.registry = Registry()
        self.clock = Clock()
        self.store = Store(self.registry, self.clock)
        self.auth = Authorizer()
        self.bookmark_interval = self._default_bookmark_interval = bookmark_interval
        self.faults: list[Fault] = []
        self.records: list[RequestRecord] = []
        self._records_lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.fake = self
        self._threads: list[threading.Thread] = []
        self.ca_pem: bytes | None = None
        if tls:
            self._enable_tls()

    def _enable_tls(self) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        # Handshake in the handler thread, not in the accept loop (a stalled client
        # must not block every other connection).
        self._httpd.socket = context.wrap_socket(
            self._httpd.socket, server_side=True, do_handshake_on_connect=False
        )
        self.ca_pem = ca.cert_pem.bytes()

    # ------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.ca_pem else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> FakeKube:
        for target, name in (
            (self._httpd.serve_forever, "fakekube-http"),
            (self._run_controllers, "fakekube-controllers"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.break_watches()
        self._httpd.shutdown()
        self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """A fresh cluster for the next test: objects, CRDs, RBAC, faults, counts, clock."""
        self.bookmark_interval = self._default_bookmark_interval
        self.store.controllers_paused = False
        self.registry.reset()
        self.store.reset()
        self.auth.reset()
        self.clock.reset()
        self.faults.clear()
        self.reset_counts()

    def _run_controllers(self) -> None:
        while not self._stop.is_set():
            with self.store.changed:
                self.store.changed.wait(timeout=0.1)
                if not self.store.controllers_paused:
                    self.store.reconcile()

    # ------------------------------------------------------ store control
    def resource(self, resource: str | ResourceType) -> ResourceType:
        return resource if isinstance(resource, ResourceType) else self.registry.lookup(resource)

    def register_crd(
        self, group: str, version: str, plural: str, kind: str, **options: Any
    ) -> ResourceType:
        """Serve a custom resource (discovery included), as an established CRD would be.

        ``options``: ``namespaced``, ``status_subresource``, ``short_names``.
        """
        return self.registry.register_crd(group, version, plural, kind, **options)

    def create(self, resource: str | ResourceType, obj: Obj, namespace: str | None = None) -> Obj:
        """Create directly: status and timestamps kept as given, namespaces auto-created."""
        return self.store.create(self.resource(resource), namespace, obj, from_api=False)

    def get(self, resource: str | ResourceType, name: str, namespace: str | None = None) -> Obj:
        return copy.deepcopy(self.store.get(self.resource(resource), namespace, name))

    def find(
        self, resource: str | ResourceType, name: str, namespace: str | None = None
    ) -> Obj | None:
        with self.store.lock:
            obj = self.store.find(self.resource(resource), namespace, name)
            return copy.deepcopy(obj)

    def list(
        self, resource: str | ResourceType, namespace: str | None = None, **query: str
    ) -> list[Obj]:
        """Objects as a LIST would return them (query: labelSelector, fieldSelector, ...)."""
        rtype = self.resource(resource)
        body = handlers.list_objects(self.store, rtype, namespace, query)
        return [
            copy.deepcopy({"apiVersion": rtype.api_version, "kind": rtype.kind, **i})
            for i in body["items"]
        ]

    def update(self, resource: str | ResourceType, obj: Obj, *, status: bool = False) -> Obj:
        """PUT without API rules: status may change, no resourceVersion check unless set."""
        md = obj["metadata"]
        return self.store.update(
            self.resource(resource),
            md.get("namespace"),
            md["name"],
            obj,
            subresource="status" if status else None,
            from_api=False,
        )

    def patch(
        self, resource: str | ResourceType, name: str, patch: Obj, namespace: str | None = None
    ) -> Obj:
        """JSON merge patch, status included (use it to finish Jobs or drop finalizers)."""
        rtype = self.resource(resource)
        with self.store.lock:
            current = self.store.get(rtype, namespace, name)
            patched = apply_patch(current, patch, "application/merge-patch+json", custom=True)
            meta(patched).pop("resourceVersion", None)
            return self.store.update(rtype, namespace, name, patched, from_api=False)

    def delete(
        self, resource: str | ResourceType, name: str, namespace: str | None = None, **options: Any
    ) -> Obj:
        """DELETE with the API's semantics (options: DeleteOptions field names)."""
        out, _ = self.store.delete(
            self.resource(resource), namespace, name, DeleteOptions(**options)
        )
        return out

    def ago(self, seconds: float) -> str:
        """A timestamp ``seconds`` before the fake clock's now (for aged fixtures)."""
        return format_time(self.clock.now() - timedelta(seconds=seconds))

    def finish_job(
        self, name: str, namespace: str = "default", *, failed: bool = False, ago: float = 0
    ) -> Obj:
        """Mark a Job Complete (or Failed) the way the Job controller does, ``ago`` s back."""
        when = self.ago(ago)
        condition = "Failed" if failed else "Complete"
        status: Obj = {
            "conditions": [
                {
                    "type": condition,
                    "status": "True",
                    "lastProbeTime": when,
                    "lastTransitionTime": when,
                },
            ],
            "startTime": self.get("batch/v1/jobs", name, namespace)["metadata"][
                "creationTimestamp"
            ],
        }
        if failed:
            status["failed"] = 1
        else:
            status.update(succeeded=1, completionTime=when)
        return self.patch("batch/v1/jobs", name, {"status": status}, namespace)

    @property
    def resource_version(self) -> int:
        return self.store.rv

    def advance(self, seconds: float) -> None:
        """Move the clock forward and run the controllers (grace periods elapse)."""
        self.clock.advance(seconds)
        self.settle()

    def settle(self) -> None:
        """Run garbage collector / kubelet / namespace controller until idle."""
        self.store.settle()

    def pause_controllers(self) -> None:
        """Freeze garbage collection etc. so a test can see intermediate states."""
        self.store.controllers_paused = True

    def resume_controllers(self) -> None:
        self.store.controllers_paused = False
        self.settle()

    def compact(self, rv: int | None = None) -> int:
        """Drop history: watches and continue tokens older than the result get 410."""
        return self.store.compact(rv)

    def break_watches(self) -> int:
        """Close every open watch stream cleanly (like an apiserver restart)."""
        with self.store.lock:
            watchers = list(self.store.watchers)
        for watcher in watchers:
            watcher.close()
        return len(watchers)

    def expire_watches(self) -> int:
        """End every open watch with ERROR 410 Expired, as a compaction past it does.

        On a real cluster the resourceVersion never stands still (leases are renewed every
        few seconds), so by the time etcd compacts, a watcher's last-seen version is
        older than the compaction and its re-watch is 410 as well: the informer must
        relist. The fake renews the controller-manager Lease to reproduce that churn,
        compacts, then reports "too old" on every open stream.
        """
        self._renew_lease()
        self.compact()
        body = errors.ApiError(
            410, "Expired", "The resourceVersion for the provided watch is too old."
        ).body()
        with self.store.lock:
            watchers = list(self.store.watchers)
        for watcher in watchers:
            watcher.error = body
            watcher.close()
        return len(watchers)

    def _renew_lease(self) -> None:
        now = self.clock.now().strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        spec = {"holderIdentity": "kube-controller-manager", "renewTime": now}
        with self.store.lock:
            if self.find("coordination.k8s.io/v1/leases", "kube-controller-manager", "kube-system"):
                self.patch(
                    "coordination.k8s.io/v1/leases",
                    "kube-controller-manager",
                    {"spec": spec},
                    "kube-system",
                )
            else:
                self.create(
                    "coordination.k8s.io/v1/leases",
                    {"metadata": {"name": "kube-controller-manager"}, "spec": spec},
                    "kube-system",
                )

    def send_bookmarks(self) -> None:
        """Make every watch that allows bookmarks send one now (no waiting on timers)."""
        with self.store.lock:
            for watcher in self.store.watchers:
                watcher.bookmark_requested = True
                watcher.wakeup.set()

    def open_watches(self) -> int:
        with self.store.lock:
            return len(self.store.watchers)

    def wait_for_watches(self, count: int, timeout: float = 10.0) -> None:
        """Block until ``count`` watches are open (a test's way to avoid racing a watch)."""
        deadline = time.monotonic() + timeout
        while self.open_watches() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.open_watches()} watches open, wanted {count}")
            time.sleep(0.01)

    # --------------------------------------------------------- faults, counts
    def inject_fault(
        self,
        status: int,
        *,
        verb: str | None = None,
        resource: str | None = None,
        path: str | None = None,
        count: int | None = 1,
        retry_after: int | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Fail matching requests with ``status`` (429/503 get Retry-After 1 by default).

        ``verb`` is the RBAC verb (get/list/watch/delete...), ``resource`` the plural or
        ``plural.group``, ``path`` a regex on the URL path; ``count=None`` never runs out.
        """
        if retry_after is None and status in (429, 503):
            retry_after = 1
        fault = Fault(status, verb, resource, path, count, retry_after, delay)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def _take_fault(self, verb: str, resource: str, path: str) -> Fault | None:
        with self._records_lock:  # handler threads race for the last hit of a fault
            for fault in self.faults:
                if fault.matches(verb, resource, path):
                    fault.hits += 1
                    return fault
        return None

    def record(self, rec: RequestRecord) -> None:
        with self._records_lock:
            self.records.append(rec)

    def request_counts(self) -> Counter[tuple[str, str, int]]:
        """Requests by (verb, resource, code), e.g. ``("delete", "jobs.batch", 200)``."""
        with self._records_lock:
            return Counter((r.verb, r.resource, r.code) for r in self.records)

    def count(
        self, verb: str | None = None, resource: str | None = None, code: int | None = None
    ) -> int:
        with self._records_lock:
            return sum(
                1
                for r in self.records
                if (verb is None or r.verb == verb)
                and (resource is None or r.resource == resource)
                and (code is None or r.code == code)
            )

    def requests(
        self, verb: str | None = None, resource: str | None = None
    ) -> builtins.list[RequestRecord]:
        with self._records_lock:
            return [
                r
                for r in self.records
                if (verb is None or r.verb == verb) and (resource is None or r.resource == resource)
            ]

    def reset_counts(self) -> None:
        with self._records_lock:
            self.records.clear()

    # ------------------------------------------------------------------ RBAC
    def grant(
        self, token: str, rules: builtins.list[dict[str, Any]], *, namespace: str | None = None
    ) -> str:
        """Give ``token`` these PolicyRules (in ``namespace``, or cluster-wide)."""
        self.auth.grant(token, rules, namespace=namespace)
        return token

    def load_rbac(self, text: str) -> builtins.list[tuple[str, User]]:
        """Load Role/ClusterRole/(Cluster)RoleBinding YAML; returns issued (token, user)."""
        return self.auth.load_yaml(text)

    def service_account_token(self, namespace: str, name: str) -> str:
        return self.auth.service_account_token(namespace, name)

    # ----------------------------------------------------------- client side
    def kubeconfig(self, path: Path, token: str = ADMIN_TOKEN, namespace: str = "default") -> Path:
        """Write a kubeconfig for ``token`` (what ``--kubeconfig`` / KUBECONFIG expect)."""
        return self.write_kubeconfig(path, self.url, token, namespace, ca_pem=self.ca_pem)

    @staticmethod
    def write_kubeconfig(
        path: Path,
        server: str,
        token: str,
        namespace: str = "default",
        *,
        ca_pem: bytes | None = None,
    ) -> Path:
        """A one-context kubeconfig for ``server`` authenticating with ``token``."""
        cluster: dict[str, str] = {"server": server}
        if ca_pem:
            cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fakekube", "cluster": cluster}],
            "users": [{"name": "fakekube-user", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "fakekube",
                    "context": {
                        "cluster": "fakekube",
                        "user": "fakekube-user",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "fakekube",
        }
        # Atomic: another thread may be loading the same kubeconfig right now.
        partial = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        partial.write_text(yaml.safe_dump(config, sort_keys=False))
        partial.replace(path)
        return path


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    fake: FakeKube

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients resetting idle keep-alive connections are normal, not tracebacks."""
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Parses one request and dispatches it; errors become Status bodies."""

    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes; with Nagle on, the body waits for the
    # client's delayed ACK (40 ms) on every keep-alive request: 45 ms per DELETE
    # instead of ~0.7 ms (measured with bench/cleanup.py).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is the RequestRecord list, not stderr."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    # ------------------------------------------------------------ plumbing
    def _serve(self, method: str) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        raw = self._read_body()
        request = _Request(fake, self, method, split.path, query, raw)
        request.run()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, code: int, body: Obj, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def send_text(self, code: int, text: str) -> None:
        payload = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def client_gone(self) -> bool:
        """True when the client closed the connection (readable with nothing to read)."""
        conn = self.connection
        try:
            readable, _, _ = select.select([conn], [], [], 0)
            if not readable:
                return False
            if not isinstance(conn, ssl.SSLSocket):
                return bool(conn.recv(1, socket.MSG_PEEK) == b"")
            # TLS cannot peek; a watch client sends nothing but close_notify or FIN.
            conn.setblocking(False)
            try:
                return conn.recv(1) == b""
            except ssl.SSLWantReadError:
                return False
            finally:
                conn.setblocking(True)
        except OSError:
            return True


class _Dropped(Exception):
    """The injected fault closed the connection; nothing more is written."""


class _Request:
    """One request's life: route, fault, authn/z, dispatch, accounting."""

    def __init__(
        self,
        fake: FakeKube,
        handler: _Handler,
        method: str,
        path: str,
        query: dict[str, str],
        raw: bytes,
    ) -> None:
        self.fake, self.handler, self.method, self.path = fake, handler, method, path
        self.query, self.raw = query, raw
        self.verb = method.lower()
        self.resource = ""
        self.route = Route()
        self.dry_run = False

    def run(self) -> None:
        try:
            self.route = parse_path(self.fake.registry, self.path)
            self._classify()
            self._apply_fault(self.fake._take_fault(self.verb, self.resource, self.path))
            user = self._authorize()
            self._dispatch(user)
        except errors.ApiError as exc:
            self._finish(exc.code)
            self.handler.send_json(exc.code, exc.body(), exc.headers)
        except (BrokenPipeError, ConnectionResetError, _Dropped):
            self.handler.close_connection = True
        except Exception as exc:  # a bug in the fake: answer like the apiserver's panic handler
            traceback.print_exc()
            self._finish(500)
            body = errors.ApiError(500, "InternalError", f"Internal error occurred: {exc!r}").body()
            self.handler.send_json(500, body)

    def _apply_fault(self, fault: Fault | None) -> None:
        if fault is None:
            return
        if fault.delay:
            time.sleep(fault.delay)
        if fault.status == 0:
            self._finish(0)
            self.handler.connection.shutdown(socket.SHUT_RDWR)
            raise _Dropped
        if fault.status >= 400:
            raise errors.fault(fault.status, fault.retry_after)

    def _classify(self) -> None:
        rtype = self.route.rtype
        if rtype is None:
            self.verb = "get" if self.method == "GET" else self.method.lower()
            return
        self.verb = rbac_verb(self.method, self.route, self.query)
        self.resource = rtype.qualified
        if self.route.sub:
            self.resource = f"{rtype.plural}/{self.route.sub}" + (
                f".{rtype.group}" if rtype.group else ""
            )
            if self.route.sub == "eviction":
                self.verb = "create"

    def _finish(self, code: int) -> None:
        name = self.route.name
        namespace = self.route.namespace
        if self.route.rtype is not None and self.route.rtype.plural == "namespaces" and name:
            namespace = name
        self.fake.record(
            RequestRecord(
                self.method,
                self.verb,
                self.resource,
                namespace,
                name,
                code,
                dict(self.query),
                self.dry_run,
            )
        )

    def _token(self) -> str | None:
        header = self.handler.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _authorize(self) -> User:
        user = self.fake.auth.authenticate(self._token())
        if user is None:
            raise errors.unauthorized()
        rtype = self.route.rtype
        if rtype is None:
            if user.name == "system:anonymous" and self.route.discovery not in (
                "version",
                "health",
            ):
                raise errors.forbidden(
                    None, None, f'User "{user.name}" cannot get path "{self.path}"'
                )
            return user
        namespace = self.route.namespace
        if rtype.plural == "namespaces" and not rtype.group and self.route.name:
            namespace = self.route.name  # a namespace is authorized inside itself
        sub = self.route.sub
        if not self.fake.auth.allowed(
            user, self.verb, rtype.group, rtype.plural, sub, namespace, self.route.name
        ):
            why = forbidden_reason(user, self.verb, rtype.group, rtype.plural, sub, namespace)
            raise errors.forbidden(rtype, self.route.name, why)
        return user

    def _body(self) -> Any:
        if not self.raw:
            return None
        try:
            return json.loads(self.raw)
        except ValueError as exc:
            raise errors.bad_request(f"the object provided is unrecognized: {exc}") from exc

    def _object_body(self) -> Obj:
        body = self._body()
        if not isinstance(body, dict):
            raise errors.bad_request("the object provided is unrecognized (must be a JSON object)")
        return body

    def _reply(self, code: int, body: Obj) -> None:
        self._finish(code)
        self.handler.send_json(code, body)

    # ------------------------------------------------------------ dispatch
    def _dispatch(self, user: User) -> None:
        route = self.route
        if route.rtype is None:
            self._discovery()
            return
        rtype, ns, name = route.rtype, route.namespace, route.name
        store = self.fake.store
        if self.verb == "watch":
            if name:  # watching one object is a watch with metadata.name selected
                fields = [
                    f for f in [self.query.get("fieldSelector"), f"metadata.name={name}"] if f
                ]
                self.query["fieldSelector"] = ",".join(fields)
            _WatchStream(self, rtype, ns).run()
        elif self.verb == "list":
            self._reply(
                200, self._maybe_table(rtype, handlers.list_objects(store, rtype, ns, self.query))
            )
        elif self.verb == "get" and route.sub == "log":
            store.get(rtype, ns, name or "")
            self._finish(200)
            self.handler.send_text(200, "")
        elif self.verb == "get":
            obj = store.get(rtype, ns, name or "")
            self._reply(200, self._maybe_table(rtype, {"metadata": {}, "items": [obj]}, obj))
        elif self.verb == "create" and route.sub == "eviction":
            self._evict(rtype, ns, name or "")
        elif self.verb == "create":
            self.dry_run = handlers.dry_run_requested(self.query, None)
            self._reply(201, store.create(rtype, ns, self._object_body(), dry_run=self.dry_run))
        elif self.verb in ("update", "patch"):
            self._write(rtype, ns, name or "")
        elif self.verb == "delete":
            self._delete(rtype, ns, name or "")
        elif self.verb == "deletecollection":
            self.dry_run = handlers.dry_run_requested(self.query, self._body())
            self._reply(200, handlers.delete_collection(store, rtype, ns, self.query, self._body()))
        else:
            raise errors.method_not_allowed(self.method, rtype)

    def _maybe_table(self, rtype: ResourceType, listing: Obj, single: Obj | None = None) -> Obj:
        """Server-side printing for kubectl; everyone else gets the object or list."""
        if not handlers.wants_table(self.handler.headers.get("Accept") or ""):
            return listing if single is None else single
        include = self.query.get("includeObject") or "Metadata"
        now = self.fake.clock.now()
        return handlers.as_table(rtype, listing["items"], listing["metadata"], now, include)

    def _discovery(self) -> None:
        kind, registry = self.route.discovery, self.fake.registry
        bodies: dict[str, Callable[[], Obj]] = {
            "version": lambda: handlers.SERVER_VERSION,
            "api": lambda: handlers.api_versions(f"127.0.0.1:{self.fake.port}"),
            "apis": lambda: handlers.api_group_list(registry),
            "group": lambda: handlers.api_group(registry, self.route.group),
            "resources": lambda: handlers.resource_list(
                registry, self.route.group, self.route.version
            ),
        }
        if kind in ("health", "root"):
            self._finish(200)
            self.handler.send_text(200, "ok")
            return
        self._reply(200, bodies[kind]())

    def _write(self, rtype: ResourceType, ns: str | None, name: str) -> None:
        store = self.fake.store
        self.dry_run = handlers.dry_run_requested(self.query, None)
        sub = self.route.sub or None
        if self.verb == "update":
            body = self._object_body()
            if rtype.custom and not meta(body).get("resourceVersion"):
                # Custom resources do not allow unconditional updates.
                raise errors.invalid(
                    rtype,
                    name,
                    [
                        (
                            "FieldValueInvalid",
                            "metadata.resourceVersion",
                            "Invalid value: 0x0: must be specified for an update",
                        )
                    ],
                )
        else:
            content_type = self.handler.headers.get("Content-Type") or ""
            with store.lock:
                current = store.get(rtype, ns, name)
                body = apply_patch(current, self._body(), content_type, custom=rtype.custom)
                if not isinstance(body, dict):
                    raise errors.bad_request("the patch must produce an object")
                if meta(body).get("resourceVersion") == meta(current).get("resourceVersion"):
                    meta(body).pop(
                        "resourceVersion", None
                    )  # patches are unconditional unless they set it
                self._reply(
                    200, store.update(rtype, ns, name, body, subresource=sub, dry_run=self.dry_run)
                )
                return
        self._reply(200, store.update(rtype, ns, name, body, subresource=sub, dry_run=self.dry_run))

    def _delete(self, rtype: ResourceType, ns: str | None, name: str) -> None:
        body = self._body()
        options = handlers.delete_options(self.query, body if isinstance(body, dict) else None)
        self.dry_run = options.dry_run
        out, deleted = self.fake.store.delete(rtype, ns, name, options)
        # The apiserver answers 202 only for a pending delete with orphanDependents=false.
        self._reply(202 if not deleted and options.orphan_dependents is False else 200, out)

    def _evict(self, rtype: ResourceType, ns: str | None, name: str) -> None:
        body = self._object_body()
        options = handlers.delete_options({}, body.get("deleteOptions") or {})
        self.dry_run = options.dry_run
        self.fake.store.delete(rtype, ns, name, options)
        self._reply(
            201,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "code": 201,
            },
        )


class _WatchStream:
    """One ``?watch=1`` response: initial events, then changes, bookmarks, timeouts."""

    def __init__(self, request: _Request, rtype: ResourceType, namespace: str | None) -> None:
        self.request, self.rtype = request, rtype
        self.fake = request.fake
        self.handler = request.handler
        query = request.query
        self.selection = handlers.Filter.from_query(rtype, namespace, query)
        self.bookmarks = query.get("allowWatchBookmarks") in TRUE_VALUES
        self.table = handlers.wants_table(request.handler.headers.get("Accept") or "")
        self.include = query.get("includeObject") or "Metadata"
        self.initial_events_end = query.get("sendInitialEvents") in TRUE_VALUES
        timeout = handlers.int_param(query, "timeoutSeconds")
        self.deadline = time.monotonic() + (timeout if timeout else DEFAULT_WATCH_TIMEOUT)
        rv = query.get("resourceVersion") or ""
        self.since = (
            None if rv in ("", "0") or self.initial_events_end else int(rv) if rv.isdigit() else -1
        )
        if self.since == -1:
            raise errors.bad_request(f"invalid resource version: {rv!r}")

    def run(self) -> None:
        initial: list[Obj] = []
        watcher: Watcher | None = None
        store = self.fake.store
        try:
            watcher = store.open_watch(
                self.rtype,
                self.selection.namespace,
                self.since,
                lambda objs: initial.extend(objs[k] for k in sorted(objs)),
            )
            start_rv = store.rv
        except errors.ApiError as exc:
            # A too-old resourceVersion is reported inside a 200 stream, as the watch cache does.
            self.request._finish(200)
            self.handler.start_stream()
            self._send("ERROR", exc.body())
            self.handler.end_stream()
            return
        self.request._finish(200)
        try:
            self.handler.start_stream()
            for obj in initial:
                if self.selection.matches(obj):
                    self._send("ADDED", obj)
            if self.initial_events_end and self.bookmarks:
                self._send(
                    "BOOKMARK", handlers.bookmark(self.rtype, start_rv, initial_events_end=True)
                )
            self._pump(watcher)
            self.handler.end_stream()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.handler.close_connection = True
        finally:
            store.close_watch(watcher)

    def _pump(self, watcher: Watcher) -> None:
        last_bookmark = time.monotonic()
        seen_rv = self.fake.store.rv if self.since is None else self.since
        while time.monotonic() < self.deadline:
            if watcher.closed:
                if watcher.error is not None:
                    self._send("ERROR", watcher.error)
                return
            watcher.wakeup.wait(timeout=min(IDLE_TICK, max(0.0, self.deadline - time.monotonic())))
            watcher.wakeup.clear()
            for change in self._drain(watcher):
                seen_rv = change.rv
                event = handlers.watch_event(self.selection, change)
                if event is not None:
                    self._send(*event)
            due = time.monotonic() - last_bookmark >= self.fake.bookmark_interval
            if self.bookmarks and (due or watcher.bookmark_requested):
                watcher.bookmark_requested = False
                last_bookmark = time.monotonic()
                self._send(
                    "BOOKMARK", handlers.bookmark(self.rtype, self._bookmark_rv(watcher, seen_rv))
                )
            if self.handler.client_gone() or self.fake._stop.is_set():
                return

    def _drain(self, watcher: Watcher) -> Iterator[Change]:
        while watcher.pending:
            yield watcher.pending.popleft()

    def _bookmark_rv(self, watcher: Watcher, seen_rv: int) -> int:
        with self.fake.store.lock:
            # Nothing queued for us: every change up to the store's RV has been seen.
            return self.fake.store.rv if not watcher.pending else seen_rv

    def _send(self, event_type: str, obj: Obj) -> None:
        if self.table and event_type in ("ADDED", "MODIFIED", "DELETED"):
            # `kubectl get -w`: every event carries a one-row Table.
            list_meta = {"resourceVersion": meta(obj).get("resourceVersion", "")}
            now = self.fake.clock.now()
            obj = handlers.as_table(self.rtype, [obj], list_meta, now, self.include)
        line = json.dumps({"type": event_type, "object": obj}, separators=(",", ":")) + "\n"
        self.handler.write_chunk(line.encode())
