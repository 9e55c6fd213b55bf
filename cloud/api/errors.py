"""How the REST API answers errors: always ``{"detail": "<message>"}``, never a 500 for bad input.

Domain errors raised anywhere below the routes (``fieldgate.cloud.errors``) are mapped here,
once: NotFound → 404, Conflict → 409, InvalidRequest → 422, and a storage or bus failure → 503
(the request may be retried; it was not the caller's fault). FastAPI's own validation errors
(malformed JSON, wrong types, unknown fields, out-of-range query values) become a 422 whose
``detail`` is one readable string, with the structured list kept under ``errors``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fieldgate.cloud.errors import CloudError, Conflict, InvalidRequest, NotFound

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[CloudError], int], ...] = (
    (NotFound, status.HTTP_404_NOT_FOUND),
    (Conflict, status.HTTP_409_CONFLICT),
    (InvalidRequest, status.HTTP_422_UNPROCESSABLE_CONTENT),
)
_MAX_LISTED = 10


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
    return await http_exception_handler(request, exc)


async def _on_model_error(request: Request, exc: Exception) -> JSONResponse:
    """A pydantic model built inside a route from a path value (e.g. a token that is not a valid
    token) is the caller's error: 422, never a 500."""
    return JSONResponse(status_code=422, content={"detail": f"invalid value: {exc}"[:500]})


def install_error_handlers(app: FastAPI) -> None:
    from pydantic import ValidationError

    app.add_exception_handler(ValidationError, _on_model_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(CloudError, _on_cloud_error)
