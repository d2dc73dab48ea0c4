"""Small local Loki and Elasticsearch servers (aiohttp) implementing the request and
response shapes the sinks use, so the sinks are tested over real HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from opsq.core.redis_server import free_port


class ServerThread:
    """Run an aiohttp app on a free port in a background thread with its own loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        self.loop.run_until_complete(site.start())
        self.thread.start()
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()


@dataclass
class FakeLoki:
    """``POST /loki/api/v1/push``: 204 on success; scripted 500s; 400 for 'REJECT' lines."""

    fail_next: int = 0
    fail_status: int = 500
    pushes: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    failures: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/loki/api/v1/push", self.push)
        return app

    async def push(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        if self.fail_next > 0:
            self.fail_next -= 1
            self.failures += 1
            return web.Response(status=self.fail_status, text="ingester unavailable")
        body = await request.json()
        lines = [v[1] for s in body["streams"] for v in s["values"]]
        if any("REJECT" in line for line in lines):
            return web.Response(status=400, text="entry too far behind")
        self.pushes.append(body)
        return web.Response(status=204)

    def values(self) -> list[tuple[dict[str, str], str, str]]:
        return [(s["stream"], ts, line) for p in self.pushes for s in p["streams"]
                for ts, line in s["values"]]  # fmt: skip


@dataclass
class FakeElasticsearch:
    """``POST /_bulk``: per-item statuses like Elasticsearch; documents kept by ``_id``."""

    throttle_once: set[str] = field(default_factory=set)
    """These _ids get one 429 item answer, then succeed."""
    mapping_error: set[str] = field(default_factory=set)
    """These _ids always get a 400 mapper_parsing_exception item answer."""
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/_bulk", self.bulk)
        return app

    async def bulk(self, request: web.Request) -> web.Response:
        self.content_types.append(request.headers.get("Content-Type", ""))
        lines = (await request.read()).decode().splitlines()
        items = []
        for action_line, doc_line in zip(lines[::2], lines[1::2], strict=True):
            action = json.loads(action_line)
            self.actions.append(action)
            items.append({"index": self._index(action["index"], json.loads(doc_line))})
        errors = any(i["index"]["status"] >= 300 for i in items)
        return web.json_response({"took": 1, "errors": errors, "items": items})

    def _index(self, meta: dict[str, str], doc: dict[str, Any]) -> dict[str, Any]:
        doc_id = meta["_id"]
        base = {"_index": meta["_index"], "_id": doc_id}
        if doc_id in self.throttle_once:
            self.throttle_once.discard(doc_id)
            return {**base, "status": 429, "error": {"type": "es_rejected_execution_exception"}}
        if doc_id in self.mapping_error:
            error = {"type": "mapper_parsing_exception", "reason": "failed to parse [line]"}
            return {**base, "status": 400, "error": error}
        result = "updated" if doc_id in self.docs else "created"
        self.docs[doc_id] = doc
        return {**base, "status": 200 if result == "updated" else 201, "result": result}
