"""How the REST API answers errors: always ``{"detail": "<message>"}``, never a 500 for bad input.

Domain errors raised anywhere below the routes (``fieldgate.cloud.errors``) are mapped here,
once: Unauthenticated → 401 (with ``WWW-Authenticate: Bearer``), NotFound → 404, Conflict → 409,
InvalidRequest → 422, and a storage or bus failure → 503
(the request may be retried; it was not the caller's fault). FastAPI's own validation errors
(malformed JSON, wrong types, unknown fields, out-of-range query values) become a 422 whose
``detail`` is one readable string, with the structured list kept under ``errors``. A request
naming another entity that does not exist (:class:`~fieldgate.cloud.errors.UnknownReference`) is
a 422 that also says which one under ``reference``. A 405 lists in ``Allow`` every method the
path has (Starlette would name only the one route it tried: each route here has one method).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fieldgate.cloud.errors import (
    CloudError,
    Conflict,
    InvalidRequest,
    NotFound,
    Unauthenticated,
    UnknownReference,
)

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[CloudError], int], ...] = (
    (NotFound, status.HTTP_404_NOT_FOUND),
    (Conflict, status.HTTP_409_CONFLICT),
    (InvalidRequest, status.HTTP_422_UNPROCESSABLE_CONTENT),
)
_MAX_LISTED = 10
#: The challenge of a 401 (RFC 6750).
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _where(loc: object) -> str:
    if isinstance(loc, list | tuple):
        return ".".join(str(part) for part in loc)
    return str(loc)


def validation_message(err: RequestValidationError) -> tuple[str, list[dict[str, str]]]:
    listed: list[dict[str, str]] = []
    for e in err.errors()[:_MAX_LISTED]:
        msg = str(e.get("msg", "invalid"))
        ctx = e.get("ctx")
        if isinstance(ctx, dict) and "error" in ctx and str(ctx["error"]) not in msg:
            msg = f"{msg}: {ctx['error']}"
        listed.append({"loc": _where(e.get("loc", ())), "msg": msg})
    text = "; ".join(f"{x['loc']}: {x['msg']}" if x["loc"] else x["msg"] for x in listed)
    return text or "invalid request", listed


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # registered for that type only
        raise exc
    detail, listed = validation_message(exc)
    ctype = request.headers.get("content-type", "")
    if any(x["loc"] == "body" for x in listed) and "json" not in ctype:
        # FastAPI parses only JSON-typed bodies; say so instead of "not a valid dictionary".
        detail = f"the request body must be a JSON object sent with Content-Type: application/json ({detail})"
    return JSONResponse(
        {"detail": detail, "errors": listed}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
    )


async def _on_cloud_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, Unauthenticated):
        return JSONResponse(
            {"detail": str(exc)},
            status_code=status.HTTP_401_UNAUTHORIZED,
            headers=CHALLENGE,
        )
    if isinstance(exc, UnknownReference):
        return JSONResponse(
            {"detail": str(exc), "reference": {"kind": exc.kind, "token": exc.token}},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return JSONResponse({"detail": str(exc)}, status_code=code)
    log.warning("%s %s failed: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": f"service unavailable: {exc}"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
    )


async def _on_http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):  # registered for that type only
        raise exc
    if exc.status_code == status.HTTP_400_BAD_REQUEST:
        # FastAPI answers 400 when a body cannot even be read as text (e.g. invalid UTF-8);
        # to clients that is one more malformed body, which this API reports as 422.
        return JSONResponse(
            {"detail": f"malformed request body: {exc.detail}"},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        allowed = allowed_methods(request.app.router.routes, request.scope)
        return JSONResponse(
            {"detail": f"method {request.method} is not allowed here; allowed: {', '.join(allowed)}"},
            status_code=status.HTTP_405_METHOD_NOT_ALLOWED,
            headers={"Allow": ", ".join(allowed)},
        )
    return await http_exception_handler(request, exc)


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route answers for the request's path, sorted (included routers
    resolved: FastAPI nests them)."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :]
    methods: set[str] = set()
    for route in iter_route_contexts(routes):
        regex = getattr(route, "path_regex", None)
        if route.methods and regex is not None and regex.match(path):
            methods |= route.methods
    return sorted(methods)


async def _on_model_error(request: Request, exc: Exception) -> JSONResponse:
    """A pydantic model built inside a route from a path value (e.g. a token that is not a valid
    token) is the caller's error: 422, never a 500."""
    return JSONResponse(status_code=422, content={"detail": f"invalid value: {exc}"[:500]})


class _BodyLimit:
    """Refuses request bodies over ``max_bytes`` with a JSON 413 like every other error: at once
    when ``Content-Length`` announces one, else when the bytes read pass the limit (the
    HTTPException raised from ``receive`` reaches the app's handlers)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"the request body is larger than {self.max_bytes} bytes"
        announced = Headers(scope=scope).get("content-length", "")
        if announced.isdigit() and int(announced) > self.max_bytes:
            await JSONResponse({"detail": detail}, status.HTTP_413_CONTENT_TOO_LARGE)(scope, receive, send)
            return
        total = 0

        async def limited() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_bytes:
                    raise StarletteHTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=detail)
            return message

        await self.app(scope, limited, send)


def limit_bodies(app: FastAPI, max_bytes: int) -> None:
    """Request bodies are at most ``max_bytes`` (413, JSON) and every operation that takes one
    documents that 413 (the limit is the app's, so it is added here once, not route by route)."""
    app.add_middleware(_BodyLimit, max_bytes=max_bytes)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                if isinstance(operation, dict) and "requestBody" in operation:
                    operation.setdefault("responses", {})["413"] = {
                        "description": f"the request body is larger than {max_bytes} bytes",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}
                        },
                    }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    from pydantic import ValidationError

    app.add_exception_handler(ValidationError, _on_model_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(CloudError, _on_cloud_error)
