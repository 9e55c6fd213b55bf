"""Authentication of the gRPC APIs, for every method of every service (enumerated from the
generated descriptors, so a method added without the check fails here): no credentials →
UNAUTHENTICATED, another tenant's token or certificate → PERMISSION_DENIED, the tenant's own →
past the check. Then the wiring in CloudApp, with a token from the REST API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from fieldgate.cloud.api.grpc.server import ApiAuth, add_grpc_api
from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.config import AuthConfig, CloudConfig, TenantConfig, TlsConfig
from fieldgate.cloud.pipeline.rules import RuleBook
from fieldgate.cloud.services.access import Principal, Role
from fieldgate.cloud.services.auth import TokenAuthority
from fieldgate.cloud.services.rules import RuleService
from fieldgate.cloud.store.sqlite.state import SqliteStateStore
from fieldgate.cloud.tls import ServerTls
from fieldgate.pki import CertificateAuthority
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc
from tests.helpers.api_stack import SECRET, api_stack
from tests.helpers.grpc_auth import bearer

pytestmark = pytest.mark.integration

# Authenticated by the edge's client certificate (ingest), not by tokens.
NOT_TOKEN_SERVICES = {"EdgeUplink"}
DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def api_methods() -> Iterator[MethodDescriptor]:
    """Every method acting inside a tenant (instance-admin methods, which name none — tenant
    management — are checked in tests/integration/test_api_tenants.py)."""
    from fieldgate.cloud.services.access import GRPC_METHODS, Permission

    for service in svc.DESCRIPTOR.services_by_name.values():
        if service.name not in NOT_TOKEN_SERVICES:
            for method in service.methods:
                if GRPC_METHODS.get(method.full_name) is not Permission.INSTANCE_ADMIN:
                    yield method


def request_for(method: MethodDescriptor, tenant: str) -> Message:
    """The method's request naming ``tenant`` where the proto puts it (top level, or in the
    entity the request carries) — found independently of the server's own lookup."""
    request = message_factory.GetMessageClass(method.input_type)()
    fields = method.input_type.fields_by_name
    if "tenant" in fields:
        request.tenant = tenant  # type: ignore[attr-defined]
        return request
    for field in method.input_type.fields:
        if field.message_type is not None and "tenant" in field.message_type.fields_by_name:
            getattr(request, field.name).tenant = tenant
            return request
    raise AssertionError(f"{method.full_name}: the request names no tenant; how would it be authorized?")


async def call(
    channel: grpc.aio.Channel, method: MethodDescriptor, request: Message, metadata: Any = None
) -> grpc.StatusCode:
    response_class = message_factory.GetMessageClass(method.output_type)
    stub = channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    try:
        await stub(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_every_api_service_is_enumerated() -> None:
    names = {m.full_name for m in api_methods()}
    assert len(names) >= 13
    assert "fieldgate.v1.DeviceManagement.CreateDevice" in names
    assert "fieldgate.v1.CommandInvocations.Invoke" in names
    assert "fieldgate.v1.EventQueries.ListInvocationEvents" in names


@pytest.fixture
async def plain_api(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    async with api_stack(tmp_path) as stack:
        server = grpc.aio.server()
        rule_store = SqliteStateStore(tmp_path / "rules")  # unstarted, like states
        add_grpc_api(
            server,
            registry=stack.registry,
            event_store=stack.event_store,
            invocations=stack.invocations,
            commands=stack.commands,
            auth=ApiAuth(TokenAuthority(SECRET, 3600)),
            site=stack.site,
            states=SqliteStateStore(tmp_path / "state"),  # unstarted: only authorization is under test
            rules=RuleService(rule_store, RuleBook(rule_store)),
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield channel
        finally:
            await server.stop(grace=None)


def token(tenant: str, secret: str = SECRET) -> str:
    return TokenAuthority(secret, 3600).issue(Principal(user="u", tenant=tenant, role=Role.TENANT_ADMIN))


@pytest.mark.parametrize("method", list(api_methods()), ids=lambda m: m.full_name)
async def test_every_method_requires_a_token_of_the_requests_tenant(
    plain_api: grpc.aio.Channel, method: MethodDescriptor
) -> None:
    request = request_for(method, "default")
    assert await call(plain_api, method, request) == grpc.StatusCode.UNAUTHENTICATED
    assert await call(plain_api, method, request, bearer(token("beta"))) == grpc.StatusCode.PERMISSION_DENIED
    forged = token("default", secret="another-secret-that-is-long-enough-for-hs256-000")
    assert await call(plain_api, method, request, bearer(forged)) == grpc.StatusCode.UNAUTHENTICATED
    basic = (("authorization", "Basic YWRtaW46YWRtaW4="),)
    assert await call(plain_api, method, request, basic) == grpc.StatusCode.UNAUTHENTICATED
    # The right one gets past the check (the servicer may still say NOT_FOUND and the like).
    code = await call(plain_api, method, request, bearer(token("default")))
    assert code not in DENIED, code


@pytest.fixture
def pki(tmp_path: Path) -> CertificateAuthority:
    ca = CertificateAuthority(tmp_path / "pki")
    ca.init(days=2)
    ca.issue_server(["127.0.0.1"])
    ca.issue_edge("edge-d", ["default"])
    ca.issue_edge("edge-x", ["default"])
    ca.revoke(edge_id="edge-x")
    return ca


@pytest.fixture
async def mtls_api(
    tmp_path: Path, pki: CertificateAuthority
) -> AsyncIterator[tuple[int, CertificateAuthority]]:
    tls = ServerTls(
        TlsConfig(
            cert_file=pki.directory / "server.pem",
            key_file=pki.directory / "server.key",
            client_ca_file=pki.cert_path,
            crl_file=pki.crl_path,
        )
    )
    async with api_stack(tmp_path) as stack:
        server = grpc.aio.server()
        rule_store = SqliteStateStore(tmp_path / "rules")  # unstarted, like states
        add_grpc_api(
            server,
            registry=stack.registry,
            event_store=stack.event_store,
            invocations=stack.invocations,
            commands=stack.commands,
            auth=ApiAuth(TokenAuthority(SECRET, 3600), tls),
            site=stack.site,
            states=SqliteStateStore(tmp_path / "state"),  # unstarted: only authorization is under test
            rules=RuleService(rule_store, RuleBook(rule_store)),
        )
        port = server.add_secure_port("127.0.0.1:0", tls.credentials())
        await server.start()
        try:
            yield port, pki
        finally:
            await server.stop(grace=None)


def mtls_channel(port: int, ca: CertificateAuthority, edge: str) -> grpc.aio.Channel:
    cert, key = ca.edge_paths(edge)
    creds = grpc.ssl_channel_credentials(ca.cert_path.read_bytes(), key.read_bytes(), cert.read_bytes())
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


async def test_a_client_certificate_of_the_tenant_authorizes_every_method(
    mtls_api: tuple[int, CertificateAuthority],
) -> None:
    port, ca = mtls_api
    async with mtls_channel(port, ca, "edge-d") as channel:
        for method in api_methods():
            assert await call(channel, method, request_for(method, "default")) not in DENIED, method.full_name
            assert (
                await call(channel, method, request_for(method, "beta")) == grpc.StatusCode.PERMISSION_DENIED
            ), method.full_name
            # A token decides when one is given: beta's token lets it act for beta only.
            code = await call(channel, method, request_for(method, "beta"), bearer(token("beta")))
            assert code not in DENIED, method.full_name
    # A revoked certificate gets nothing, not even with a valid token.
    async with mtls_channel(port, ca, "edge-x") as channel:
        for method in api_methods():
            code = await call(channel, method, request_for(method, "default"), bearer(token("default")))
            assert code == grpc.StatusCode.UNAUTHENTICATED, method.full_name


async def test_cloud_app_serves_the_grpc_apis_with_the_rest_apis_tokens(tmp_path: Path) -> None:
    config = CloudConfig(
        data_dir=tmp_path / "cloud",
        grpc_port=0,
        rest_port=0,
        tenants=(TenantConfig(token="default"), TenantConfig(token="beta")),
        auth=AuthConfig(),  # the secret is generated by the app and shared by REST and gRPC
    )
    async with CloudApp(config) as app:
        await app.ensure_admin("pw-for-the-test")
        await app.parts.users.set_password("dora", "pw-of-dora", tenant="default", role=Role.TENANT_ADMIN)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.rest_port}", timeout=10) as http:
            tokens = {}
            for user, password in (("admin", "pw-for-the-test"), ("dora", "pw-of-dora")):
                r = await http.post("/api/v1/auth/token", data={"username": user, "password": password})
                r.raise_for_status()
                tokens[user] = r.json()["access_token"]
            rest_token = tokens["dora"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = svc_grpc.DeviceManagementStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListDeviceTypes(svc.ListDeviceTypesRequest(tenant="default"))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            listed = await stub.ListDeviceTypes(
                svc.ListDeviceTypesRequest(tenant="default"), metadata=bearer(rest_token)
            )
            assert "default" in {t.token for t in listed.device_types}
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListDeviceTypes(
                    svc.ListDeviceTypesRequest(tenant="beta"), metadata=bearer(rest_token)
                )
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # admin is the instance admin (CloudApp.ensure_admin): every tenant
            await stub.ListDeviceTypes(
                svc.ListDeviceTypesRequest(tenant="beta"), metadata=bearer(tokens["admin"])
            )
            # A deleted user's token is refused at once here too (the same check as REST's).
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.rest_port}", timeout=10) as http:
                admin = {"Authorization": f"Bearer {tokens['admin']}"}
                assert (await http.delete("/api/v1/users/dora", headers=admin)).status_code == 204
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListDeviceTypes(
                    svc.ListDeviceTypesRequest(tenant="default"), metadata=bearer(rest_token)
                )
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in str(
                info.value.details()
            )
