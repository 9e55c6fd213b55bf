"""Bearer tokens on gRPC calls for tests: a client interceptor that signs, for every request, a
token of the tenant the request names (the gRPC APIs require one; cloud/api/grpc/server.py ApiAuth).

Tests of the servicers' own rules (unknown tenants, cross-tenant reads answered NOT_FOUND) use
it to call as a caller entitled to the tenant they name; tests of the authentication itself
(tests/integration/test_grpc_auth.py) send their metadata by hand instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from fieldgate.cloud.api.grpc.server import request_tenant
from fieldgate.cloud.services.access import Principal, Role
from fieldgate.cloud.services.auth import TokenAuthority


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# grpc-stubs make the interceptor generic; grpc's class is not (it cannot be subscripted here).
class TenantTokenInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Adds ``authorization: Bearer <token of the request's tenant>`` (``fallback_tenant`` when
    the request names none, so the server's INVALID_ARGUMENT for a missing tenant shows)."""

    def __init__(self, authority: TokenAuthority, fallback_tenant: str = "default") -> None:
        self._authority = authority
        self._fallback = fallback_tenant

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        tenant = request_tenant(request) or self._fallback
        token = self._authority.issue(Principal(user="test", tenant=tenant, role=Role.TENANT_ADMIN))
        metadata = list(client_call_details.metadata or ()) + list(bearer(token))
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            grpc.aio.Metadata(*metadata),
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)
