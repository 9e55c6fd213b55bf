"""Serves the dashboard: the built single-page app (dashboard/, built into
``fieldgate/cloud/api/rest/static/dashboard/`` by ``make dashboard`` and shipped as package data).

* ``GET /`` and every other GET of a path no route serves and that is not the API's
  (``/devices/x``, ``/alerts``, ``/login``, ...) → ``index.html`` (``no-cache``: a new build is
  seen at once); the SPA routes in the browser;
* ``GET /assets/<file>`` → the build's content-hashed files, cached for a year;
* other top-level files of the build (``/favicon.svg``) are served as they are.

Those responses carry the Content-Security-Policy of docs/dashboard.md (no inline scripts,
nothing from other origins; ``/docs`` and ``/redoc`` have their own, cloud/api/rest/api_docs.py),
``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``. Paths under
``/api/`` (and the docs and probes) that no route serves stay JSON 404s. Without a build the
page answers 503 saying how to build it. The SPA talks to the REST API like any client, with
the bearer token in the Authorization header (never in a URL).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, status
from fastapi.responses import FileResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

DEFAULT_STATIC_DIR = Path(__file__).resolve().parent / "static" / "dashboard"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ASSET_CACHE = "public, max-age=31536000, immutable"
# First path segments that are never the SPA's (their unknown paths stay JSON 404s).
RESERVED = frozenset({"api", "docs", "redoc", "openapi.json", "healthz", "readyz", "metrics", "assets"})
NOT_BUILT = (
    "The dashboard is not built: run `make dashboard` (needs Node.js at build time) to build "
    "dashboard/ into fieldgate/cloud/api/rest/static/dashboard/. The REST API works without it: /docs.\n"
)


class DashboardFiles:
    """The build directory and how its files are answered (see the module docstring)."""

    def __init__(self, static_dir: Path | None = None) -> None:
        self.root = (static_dir or DEFAULT_STATIC_DIR).resolve()

    @property
    def built(self) -> bool:
        return (self.root / "index.html").is_file()

    def index(self) -> Response:
        if not self.built:
            return PlainTextResponse(NOT_BUILT, status.HTTP_503_SERVICE_UNAVAILABLE, headers=SECURITY_HEADERS)
        return FileResponse(
            self.root / "index.html",
            media_type="text/html; charset=utf-8",
            headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
        )

    def file(self, relative: str, cache: str) -> Response | None:
        """The build's file at ``relative`` (never outside the build directory), or None."""
        if not relative or "\x00" in relative:
            return None
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={**SECURITY_HEADERS, "Cache-Control": cache})


def dashboard_router(files: DashboardFiles) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def dashboard() -> Response:
        return files.index()

    @router.get("/assets/{path:path}")
    async def asset(path: str) -> Response:
        found = files.file(f"assets/{path}", ASSET_CACHE)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such dashboard asset")
        return found

    return router


def install_spa_fallback(app: FastAPI, files: DashboardFiles) -> None:
    """Answer GETs that no route matched with the SPA (or a top-level build file), unless the
    path is the API's. Hooked in as the router's not-found handler rather than a catch-all
    route, so that e.g. ``POST /api/v1/nope`` stays a 404 (a catch-all GET would make it 405)."""
    not_found: Callable[[Scope, Receive, Send], Awaitable[None]] = app.router.default

    async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", "/"))
        first = path.lstrip("/").split("/", 1)[0]
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and first not in RESERVED:
            response = None
            if "/" not in path.lstrip("/") and "." in first:  # a top-level file of the build
                response = files.file(first, "no-cache")
            else:  # an SPA route (also /devices/sensor.1: tokens may contain dots)
                response = files.index()
            if response is not None:
                await response(scope, receive, send)
                return
        await not_found(scope, receive, send)

    app.router.default = fallback
