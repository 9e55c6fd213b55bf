"""HTTP servers inside the cloud process: the REST API (the ``api`` service) and the health
listener (``health.port``), each a uvicorn server on the process's event loop.

uvicorn's own signal handling is off: the process owner (``fieldgate cloud run``, the suite,
a test) decides when to stop, and SIGTERM first drains (cloud/app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from fieldgate.cloud.errors import CloudError


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the process owner decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """An ASGI application served on ``host:port`` (port 0 picks a free one) from
    :meth:`start` until :meth:`stop`. ``make_app`` is called at start: what it serves may
    depend on what the process loaded by then (the token-signing key)."""

    def __init__(self, name: str, make_app: Callable[[], Any], host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port  # the bound port once started
        self.app: Any = None  # what make_app returned (the FastAPI app of the REST API)
        self._make_app = make_app
        self._server: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None

    def running(self) -> bool:
        """Liveness: not serving yet (or stopped), or still serving; False once it died."""
        return self._task is None or not self._task.done()

    async def start(self) -> None:
        self.app = self._make_app()
        server = _EmbeddedUvicorn(
            uvicorn.Config(
                self.app,
                host=self.host,
                port=self.port,
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        self._server = server
        self._task = asyncio.create_task(server.serve(), name=self.name)
        while not server.started:
            if self._task.done():
                self._task.result()  # uvicorn's own error, if it raised one
                raise CloudError(f"{self.name}: cannot listen on {self.host}:{self.port}")
            await asyncio.sleep(0.01)
        self.port = int(server.servers[0].sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._server = self._task = None
