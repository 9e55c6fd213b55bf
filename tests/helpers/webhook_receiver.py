"""A real HTTP receiver for the webhook connector tests: uvicorn + Starlette on 127.0.0.1.

It records every request it answered with 2xx (body, headers) and can be told to fail for a
while: ``mode = "500"`` answers 500, ``"hang"`` sleeps past the client's timeout, ``"ok"``
accepts, ``"redirect"`` answers 302 to its own URL (a client that followed it would be
accepted). Failures carry a body (``SECRET_BODY``) that must never reach a dead letter. It de-duplicates on ``Idempotency-Key`` the way a receiver should, so a test can
tell a duplicate (same key, counted in ``duplicates``) from a second, different delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

#: What the receiver's error responses say in their body (tests check no dead letter holds it).
SECRET_BODY = "internal detail: db=10.0.0.5 user=admin"


@dataclass
class Receiver:
    secret: str | None = None
    mode: str = "ok"
    hang_s: float = 5.0
    port: int = 0
    accepted: list[dict[str, Any]] = field(default_factory=list)  # bodies, in arrival order
    keys: dict[str, int] = field(default_factory=dict)  # idempotency key -> times accepted
    requests: int = 0
    failed: int = 0
    bad_signatures: int = 0
    attempts_seen: list[int] = field(default_factory=list)
    connectors: list[str] = field(default_factory=list)  # X-Fieldgate-Connector of each accepted

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.keys.values())

    def event_ids(self) -> list[str]:
        out: list[str] = []
        for body in self.accepted:
            out.extend(e["id"] for e in body["events"]) if "events" in body else out.append(body["id"])
        return out

    async def handle(self, request: Request) -> Response:
        self.requests += 1
        body = await request.body()
        self.attempts_seen.append(int(request.headers.get("x-fieldgate-attempt", "0")))
        if self.mode == "500":
            self.failed += 1
            return Response(SECRET_BODY, status_code=500)
        if self.mode == "redirect":
            self.failed += 1
            return Response(SECRET_BODY, status_code=302, headers={"Location": self.url + "?followed=1"})
        if self.mode == "hang":
            self.failed += 1
            await asyncio.sleep(self.hang_s)
            return Response("too late", status_code=200)
        if self.mode == "400":
            self.failed += 1
            return Response(SECRET_BODY, status_code=400)
        if self.secret is not None:
            expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, request.headers.get("x-fieldgate-signature", "")):
                self.bad_signatures += 1
                return Response("bad signature", status_code=401)
        key = request.headers["idempotency-key"]
        self.keys[key] = self.keys.get(key, 0) + 1
        self.accepted.append(orjson.loads(body))
        self.connectors.append(request.headers.get("x-fieldgate-connector", ""))
        return JSONResponse({"ok": True})


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers (the test process owns them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def webhook_receiver(secret: str | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver(secret=secret)
    app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    server = _QuietServer(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    receiver.port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield receiver
    finally:
        server.should_exit = True
        server.force_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
