"""What every gRPC servicer shares: the context type, the status of a domain error, paging, the
request's tenant check, and the conversions of JSON text fields and validation errors.

The servicers (one module per service: devices, events, commands, tenants, customers, site,
states, rules) import only this module and the services; :mod:`.server` registers them behind
its :class:`~fieldgate.cloud.api.grpc.server.ApiAuth` and maps the domain errors they raise to
status codes with :func:`status_of`, once for every method (as the REST API's error handlers do,
cloud/api/rest/errors.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
from pydantic import ValidationError

from fieldgate.cloud.errors import (
    CloudError,
    Conflict,
    Cycle,
    InUse,
    InvalidRequest,
    NotFound,
    Unauthenticated,
)
from fieldgate.cloud.services.management import DEFAULT_PAGE_SIZE
from fieldgate.cloud.store.registry import Registry
from fieldgate.v1 import services_pb2 as svc

Context = grpc.aio.ServicerContext[Any, Any]

_TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# First match wins: the subclasses (InUse, Cycle) before their base (Conflict).
_CODES: tuple[tuple[type[CloudError], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InUse, grpc.StatusCode.FAILED_PRECONDITION),
    (Cycle, grpc.StatusCode.FAILED_PRECONDITION),
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_of(err: CloudError) -> grpc.StatusCode:
    """The status a domain error ends a call with: NotFound → NOT_FOUND, InUse and Cycle →
    FAILED_PRECONDITION, Conflict → ALREADY_EXISTS, InvalidRequest → INVALID_ARGUMENT,
    Unauthenticated → UNAUTHENTICATED, anything else (a storage or bus failure) → UNAVAILABLE."""
    return next((code for kind, code in _CODES if isinstance(err, kind)), grpc.StatusCode.UNAVAILABLE)


def paging(page: svc.PageRequest) -> tuple[int, int]:
    """Unset fields (0) mean page 1 and the default size; the limits are checked downstream."""
    return (page.page or 1, page.page_size or DEFAULT_PAGE_SIZE)


class TenantCheck:
    """The tenant a request names, if the registry knows it (a request cannot create storage
    for a tenant that was never configured): InvalidRequest if it names none, NotFound for
    one that does not exist."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def __call__(self, tenant: str) -> str:
        if not tenant:
            raise InvalidRequest("tenant is required")
        if not _TENANT_RE.fullmatch(tenant) or await self._registry.get_tenant(tenant) is None:
            raise NotFound(f"tenant {tenant[:70]!r} does not exist")
        return tenant


def json_object(text: str, field: str) -> dict[str, Any]:
    """A request's JSON-object text field (``params_json``, ``settings_json``); empty → {}."""
    if not text:
        return {}
    try:
        obj = json.loads(text)
    except ValueError as err:
        raise InvalidRequest(f"{field} is not JSON: {err}") from err
    if not isinstance(obj, dict):
        raise InvalidRequest(f"{field} must encode a JSON object")
    return obj


def validation_errors(err: ValidationError) -> str:
    """The first errors of a document that does not validate, each naming its field."""
    parts = [f"{'.'.join(str(x) for x in e['loc']) or 'json'}: {e['msg']}" for e in err.errors()[:5]]
    return "; ".join(parts)
