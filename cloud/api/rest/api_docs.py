"""The interactive API documentation, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served
entirely by the app.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google), so
they are blank on a gateway or in a cluster without internet. These are the same pages
(FastAPI's :func:`~fastapi.openapi.docs.get_swagger_ui_html` and
:func:`~fastapi.openapi.docs.get_redoc_html`) with the assets vendored into ``static/docs/``
(versions, licences and how to update them: its README.md) and served under ``/docs/static/``.

The pages carry a Content-Security-Policy of their own that allows nothing from another origin:
scripts from this origin, plus, by its hash, the one inline script of the Swagger UI page (the
initialisation, which names the OpenAPI URL, so it is hashed as rendered). Swagger UI and ReDoc
insert ``<style>`` elements, so styles may be inline here; the dashboard keeps its stricter
policy (cloud/api/rest/dashboard.py). Swagger UI's online validator is off: it would send the
OpenAPI document to another host.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request, status
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

DOCS_STATIC_DIR = Path(__file__).resolve().parent / "static" / "docs"
STATIC_PREFIX = "/docs/static"
SWAGGER_JS = "swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui/swagger-ui.css"
FAVICON = "swagger-ui/favicon-32x32.png"
REDOC_JS = "redoc/redoc.standalone.js"

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def docs_csp(html: str) -> str:
    """The policy of a documentation page: this origin only, and the page's own inline scripts
    by hash (a browser runs an inline script only if the policy names its exact text)."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src 'self' blob:; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    html = bytes(page.body).decode()
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": docs_csp(html),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def api_docs_router(app: FastAPI, static_dir: Path = DOCS_STATIC_DIR) -> APIRouter:
    """``/docs``, ``/docs/oauth2-redirect``, ``/redoc`` and ``/docs/static/<file>`` for ``app``
    (created with ``docs_url=None, redoc_url=None``, so FastAPI's CDN pages are not routed)."""
    root = static_dir.resolve()
    router = APIRouter(include_in_schema=False)
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    def base(request: Request) -> str:
        # Behind a proxy that mounts the app under a prefix, every URL is below it.
        return str(request.scope.get("root_path", "")).rstrip("/")

    @router.get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        prefix = base(request)
        return _with_policy(
            get_swagger_ui_html(
                openapi_url=prefix + app.openapi_url if app.openapi_url else "",
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{prefix}{STATIC_PREFIX}/{SWAGGER_JS}",
                swagger_css_url=f"{prefix}{STATIC_PREFIX}/{SWAGGER_CSS}",
                swagger_favicon_url=f"{prefix}{STATIC_PREFIX}/{FAVICON}",
                oauth2_redirect_url=prefix + oauth2_redirect,
                init_oauth=app.swagger_ui_init_oauth,
                swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
            )
        )

    @router.get(oauth2_redirect)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _with_policy(get_swagger_ui_oauth2_redirect_html())

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        prefix = base(request)
        return _with_policy(
            get_redoc_html(
                openapi_url=prefix + app.openapi_url if app.openapi_url else "",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{prefix}{STATIC_PREFIX}/{REDOC_JS}",
                redoc_favicon_url=f"{prefix}{STATIC_PREFIX}/{FAVICON}",
                with_google_fonts=False,
            )
        )

    @router.get(STATIC_PREFIX + "/{path:path}")
    async def asset(path: str) -> FileResponse:
        found = (root / path).resolve() if path and "\x00" not in path else None
        if found is None or not found.is_relative_to(root) or not found.is_file():
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such documentation asset")
        return FileResponse(
            found,
            media_type=mimetypes.guess_type(found.name)[0] or "application/octet-stream",
            # Revalidated (ETag) rather than cached for good: the names carry no version.
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    return router
