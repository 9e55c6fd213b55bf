"""Tenants and customers through REST and gRPC on the real stack (SQLite stores, embedded bus):
who may manage tenants, provisioning and deprovisioning (files, topics), settings validated
(422 naming the key), the confirm rule (400), the configured tenant (409), duplicate tokens
(409), too-long strings (422), customers and their devices; ingest's rate limit with a
real edge uplink (nothing lost, the bucket's bound holds); and a tenant created again under the
same token whose events never reach the old tenant's connectors (a connectors stage nobody told
of the deletion). Everything a deletion removes, on both backends:
tests/contract/test_tenant_lifecycle_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import httpx
import pytest

from fieldgate.cloud.api.grpc.server import ApiAuth, add_grpc_api
from fieldgate.cloud.api.rest.app import create_api
from fieldgate.cloud.bus import DECODED, PERSISTED, STAGES, Message, topic_name
from fieldgate.cloud.config import AuthConfig
from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.domain.connectors.sink import Sink
from fieldgate.cloud.pipeline.connectors.stage import ConnectorStage, ConnectorStageSettings
from fieldgate.cloud.pipeline.ingest.ratelimit import TokenBucket
from fieldgate.cloud.pipeline.stage import messages_by_device
from fieldgate.cloud.services.auth import TokenAuthority
from fieldgate.cloud.services.tenants import TenantAdmin
from fieldgate.cloud.zk.models import TenantSettings, TenantSettingsRegistry
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc
from tests.helpers.api_stack import SECRET, ApiStack, api_stack, login
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.integration


class Stack:
    def __init__(self, stack: ApiStack, admin: TenantAdmin, live: TenantSettingsRegistry, root: Path) -> None:
        self.stack, self.admin, self.live, self.root = stack, admin, live, root


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Stack]:
    async with api_stack(tmp_path) as stack:
        live = TenantSettingsRegistry([TenantSettings(token="default"), TenantSettings(token="beta")])
        admin = TenantAdmin(
            stack.registry,
            stack.tenant_stores(),
            stack.bus,
            configured=["default", "beta"],
            live=live,
        )
        stack.app = create_api(
            registry=stack.registry,
            event_store=stack.event_store,
            invocations=stack.invocations,
            commands=stack.commands,
            users=stack.users,
            auth=AuthConfig(),
            secret=SECRET,
            tenants=admin,
        )
        yield Stack(stack, admin, live, tmp_path)


def files(root: Path, tenant: str) -> list[str]:
    return sorted(p.name for p in root.rglob(f"*{tenant}.db"))


async def test_tenant_crud_provisions_and_removes_everything(env: Stack) -> None:
    async with env.stack.client() as client:
        root = await login(client, "root")
        tenant_admin = await login(client, "admin")
        assert (await client.get("/api/v1/tenants", headers=tenant_admin)).status_code == 403
        assert (await client.get("/api/v1/tenants")).status_code == 401

        body = {"token": "acme", "name": "Acme", "auto_register": False, "max_events_per_s": 50}
        r = await client.post("/api/v1/tenants", json=body, headers=root)
        assert r.status_code == 201, r.text
        out = r.json()
        assert out["token"] == "acme" and out["name"] == "Acme" and not out["configured"] and out["created"]
        assert out["settings"]["max_events_per_s"] == 50 and out["settings"]["auto_register"] is False
        # Provisioned: files, the default device type, live settings.
        assert files(env.root, "acme") == [
            "acme.db",  # batch operations and schedules
            "acme.db",  # connectors
            "events-acme.db",
            "invocations-acme.db",
            "registry-acme.db",
            "site-acme.db",
            "state-acme.db",
        ]
        assert await env.stack.registry.get_device_type("acme", "default") is not None
        assert env.live.get("acme") is not None and env.live.get("acme").max_events_per_s == 50  # type: ignore[union-attr]

        assert (await client.post("/api/v1/tenants", json=body, headers=root)).status_code == 409
        bad = await client.post("/api/v1/tenants", json={"token": "Bad Token"}, headers=root)
        assert bad.status_code == 422 and "body.token" in bad.json()["detail"]
        neg = await client.post(
            "/api/v1/tenants", json={"token": "neg", "max_events_per_s": -1}, headers=root
        )
        assert neg.status_code == 422 and "max_events_per_s" in neg.json()["detail"]
        unknown = await client.post("/api/v1/tenants", json={"token": "u", "colour": "red"}, headers=root)
        assert unknown.status_code == 422 and "colour" in unknown.json()["detail"]
        assert await env.stack.registry.get_tenant("neg") is None and files(env.root, "neg") == []

        listed = (await client.get("/api/v1/tenants", headers=root)).json()
        assert [t["token"] for t in listed["items"]] == ["default", "beta", "acme"] and listed["total"] == 3
        assert (await client.get("/api/v1/tenants/nobody", headers=root)).status_code == 404

        r = await client.patch("/api/v1/tenants/acme", json={"retention_days": 0}, headers=root)
        assert r.status_code == 422 and "retention_days" in r.json()["detail"]
        r = await client.patch(
            "/api/v1/tenants/acme",
            json={"name": "Acme Corp", "pipeline": {"max_batch_events": 10}},
            headers=root,
        )
        assert r.status_code == 200, r.text
        s = r.json()["settings"]
        assert s["max_events_per_s"] == 50 and s["pipeline"] == {
            "persist_events": True,
            "max_batch_events": 10,
        }
        assert (await client.get("/api/v1/tenants/acme", headers=root)).json()["name"] == "Acme Corp"
        assert env.live.get("acme").pipeline.max_batch_events == 10  # type: ignore[union-attr]
        assert (await client.patch("/api/v1/tenants/nobody", json={}, headers=root)).status_code == 404

        # The tenant is usable at once: its admin user... (the registry takes writes) and the bus.
        await env.stack.registry.create_device(model.Device(token="d1", tenant="acme", device_type="default"))
        await env.stack.bus.publish(topic_name("acme", DECODED), [Message(b"d1", b"x")])

        r = await client.delete("/api/v1/tenants/acme", headers=root)
        assert r.status_code == 400 and "confirm" in r.json()["detail"]
        assert (await client.delete("/api/v1/tenants/acme?confirm=acm", headers=root)).status_code == 400
        r = await client.delete("/api/v1/tenants/default?confirm=default", headers=root)
        assert r.status_code == 409 and "configuration file" in r.json()["detail"]
        r = await client.delete("/api/v1/tenants/acme?confirm=acme", headers=root)
        assert r.status_code == 200, r.text
        assert (
            "registry" in r.json()["removed"]
            and f"topic {topic_name('acme', DECODED)}" in r.json()["removed"]
        )
        assert files(env.root, "acme") == []
        assert (await client.get("/api/v1/tenants/acme", headers=root)).status_code == 404
        assert env.live.get("acme") is None
        assert not any(t.endswith(f".acme.{s}") for s in STAGES for t in env.stack.bus.end_offsets(s))
        assert (await client.delete("/api/v1/tenants/acme?confirm=acme", headers=root)).status_code == 404


async def test_customers_through_rest(env: Stack) -> None:
    async with env.stack.client() as client:
        admin = await login(client, "admin")
        viewer = await login(client, "vera")
        assert (
            await client.post("/api/v1/customer-types", json={"token": "site"}, headers=viewer)
        ).status_code == 403
        r = await client.post("/api/v1/customer-types", json={"token": "site", "name": "Site"}, headers=admin)
        assert r.status_code == 201 and r.json()["created"]
        assert (
            await client.post("/api/v1/customer-types", json={"token": "site"}, headers=admin)
        ).status_code == 409
        long = await client.post(
            "/api/v1/customer-types", json={"token": "x", "name": "n" * 201}, headers=admin
        )
        assert long.status_code == 422 and "name" in long.json()["detail"]

        async def customer(token: str, parent: str = "", **extra: object) -> httpx.Response:
            body = {"token": token, "customer_type": "site", "parent": parent, **extra}
            return await client.post("/api/v1/customers", json=body, headers=admin)

        assert (await customer("c1", metadata={"vat": "1"})).status_code == 201
        assert (await customer("c2", parent="c1")).status_code == 201
        assert (await customer("c1")).status_code == 409
        r = await customer("c3", parent="ghost")
        assert r.status_code == 422 and r.json()["reference"] == {"kind": "parent customer", "token": "ghost"}
        r = await client.post(
            "/api/v1/customers", json={"token": "c4", "customer_type": "nope"}, headers=admin
        )
        assert r.status_code == 422 and r.json()["reference"] == {"kind": "customer type", "token": "nope"}
        assert (await customer("c5", description="d" * 2001)).status_code == 422
        r = await client.put(
            "/api/v1/customers/c1", json={"customer_type": "site", "parent": "c2"}, headers=admin
        )
        assert r.status_code == 409 and "cycle" in r.json()["detail"]
        kids = (await client.get("/api/v1/customers?parent=c1", headers=admin)).json()
        assert [c["token"] for c in kids["items"]] == ["c2"]
        assert (await client.get("/api/v1/customers?page_size=1&page=2", headers=admin)).json()["total"] == 2

        await client.post("/api/v1/device-types", json={"token": "sensor"}, headers=admin)
        r = await client.post("/api/v1/devices", json={"token": "d1", "device_type": "sensor"}, headers=admin)
        assert r.status_code == 201, r.text
        r = await client.post(
            "/api/v1/assignments", json={"device": "d1", "customer": "ghost"}, headers=admin
        )
        assert r.status_code == 422 and "customer 'ghost' does not exist" in r.json()["detail"]
        r = await client.post("/api/v1/assignments", json={"device": "d1", "customer": "c1"}, headers=admin)
        assert r.status_code == 201
        devices = (await client.get("/api/v1/customers/c1/devices", headers=admin)).json()
        assert [d["token"] for d in devices["items"]] == ["d1"] and devices["total"] == 1
        r = await client.delete("/api/v1/customers/c1", headers=admin)
        assert r.status_code == 409 and "c2" in r.json()["detail"]
        assert (await client.delete("/api/v1/customers/c2", headers=admin)).status_code == 200
        r = await client.delete("/api/v1/customers/c1", headers=admin)
        assert r.status_code == 409 and "release" in r.json()["detail"]
        assert (await client.get("/api/v1/customers/ghost", headers=admin)).status_code == 404
        # Another tenant sees none of it.
        bob = await login(client, "bob")
        assert (await client.get("/api/v1/customers/c1", headers=bob)).status_code == 404
        assert (await client.get("/api/v1/customers", headers=bob)).json()["total"] == 0


async def test_tenant_management_over_grpc_is_for_instance_admins(env: Stack) -> None:
    server = grpc.aio.server()
    authority = TokenAuthority(SECRET, 3600)
    st = env.stack
    add_grpc_api(
        server,
        registry=st.registry,
        event_store=st.event_store,
        invocations=st.invocations,
        commands=st.commands,
        auth=ApiAuth(authority),
        tenants=env.admin,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with st.client() as client:
            root = (await login(client, "root"))["Authorization"]
            tenant_admin = (await login(client, "admin"))["Authorization"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            tm = svc_grpc.TenantManagementStub(channel)
            cm = svc_grpc.CustomerManagementStub(channel)
            as_root = (("authorization", root),)
            for md in ((), (("authorization", tenant_admin),)):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await tm.ListTenants(svc.ListTenantsRequest(), metadata=md)
                assert info.value.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                )
            created = await tm.CreateTenant(
                svc.CreateTenantRequest(token="acme", settings_json='{"max_events_per_s": 5}'),
                metadata=as_root,
            )
            assert created.token == "acme" and '"max_events_per_s":5.0' in created.settings_json
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await tm.UpdateTenant(
                    svc.UpdateTenantRequest(token="acme", settings_json='{"decoders": ["xml"]}'),
                    metadata=as_root,
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "decoders" in str(
                info.value.details()
            )
            listed = await tm.ListTenants(svc.ListTenantsRequest(), metadata=as_root)
            assert [t.token for t in listed.tenants] == ["default", "beta", "acme"]
            await cm.CreateCustomerType(
                svc.CreateCustomerTypeRequest(tenant="acme", customer_type=model.CustomerType(token="site")),
                metadata=as_root,
            )
            got = await cm.ListCustomerTypes(svc.ListCustomerTypesRequest(tenant="acme"), metadata=as_root)
            assert got.total == 1
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await tm.DeleteTenant(svc.DeleteTenantRequest(token="acme"), metadata=as_root)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "confirm" in str(
                info.value.details()
            )
            done = await tm.DeleteTenant(
                svc.DeleteTenantRequest(token="acme", confirm="acme"), metadata=as_root
            )
            assert "registry" in done.removed
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await tm.GetTenant(svc.GetTenantRequest(token="acme"), metadata=as_root)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(grace=None)


def test_token_bucket_holds_the_average_and_passes_big_batches() -> None:
    now = [0.0]
    bucket = TokenBucket(10, 20, clock=lambda: now[0])
    assert bucket.delay(20) == 0
    bucket.take(20)
    assert bucket.delay(5) == pytest.approx(0.5)
    now[0] = 0.5
    assert bucket.delay(5) == 0
    bucket.take(5)
    # Bigger than the bucket: passes when full, then the debt is waited off.
    now[0] = 10.0
    assert bucket.delay(100) == 0
    bucket.take(100)
    assert bucket.delay(1) == pytest.approx(8.1)


class _Receivers:
    """Where each connector's deliveries arrive, by the connector's URL (the receiving end of a
    webhook: what its owner would see)."""

    def __init__(self) -> None:
        self.got: dict[str, list[str]] = {}

    def sink(self, tenant: str, spec: ConnectorSpec) -> Sink:
        assert spec.webhook is not None
        return _Recording(self.got.setdefault(str(spec.webhook.url), []))


class _Recording:
    def __init__(self, into: list[str]) -> None:
        self._into = into

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, events: Sequence[pb.Event], *, attempt: int) -> None:
        self._into.extend(ev.alternate_id for ev in events)


async def test_a_tenant_created_again_never_reaches_the_old_owners_connectors(tmp_path: Path) -> None:
    """A connectors stage that was not told of the deletion (another process; here one that
    does not refresh its connectors for an hour) still holds the old tenant's connector: the
    new tenant's events must not reach it, and do reach the new tenant's own."""
    old_url, new_url = "https://old-owner.example/hook", "https://new-owner.example/hook"

    def spec(url: str) -> ConnectorSpec:
        return ConnectorSpec.model_validate({"id": "hook", "kind": "webhook", "webhook": {"url": url}})

    async def send(stack: ApiStack, alts: list[str]) -> None:
        events = [pb.Event(tenant="acme", device="d1", alternate_id=a, event_time_ms=now_ms()) for a in alts]
        await stack.bus.publish(topic_name("acme", PERSISTED), messages_by_device(events))

    receivers = _Receivers()
    async with api_stack(tmp_path) as stack:
        admin = TenantAdmin(stack.registry, stack.tenant_stores(), stack.bus)
        await admin.create("acme", {})
        await stack.connectors.create("acme", spec(old_url))
        settings = ConnectorStageSettings(refresh_s=3600, poll_timeout_s=0.1)
        stage = ConnectorStage(
            stack.bus, stack.connectors, stack.registry, settings=settings, sink_factory=receivers.sink
        )
        await stage.start()
        try:
            await send(stack, ["old-1", "old-2"])

            async def old_delivered() -> bool:
                return receivers.got.get(old_url) == ["old-1", "old-2"]

            await eventually(old_delivered, what="the old tenant's events at its connector")

            await admin.delete("acme", "acme")  # the stage is not told
            await admin.create("acme", {})
            assert await stack.connectors.list_connectors("acme") == []  # inherits nothing
            await stack.connectors.create("acme", spec(new_url))
            await send(stack, ["new-1", "new-2"])

            async def new_delivered() -> bool:
                return receivers.got.get(new_url) == ["new-1", "new-2"]

            await eventually(new_delivered, what="the new tenant's events at its own connector")
            assert receivers.got[old_url] == ["old-1", "old-2"]
            assert stage.runner("acme", "hook") is not None
            assert str(stage.runner("acme", "hook").spec.webhook.url) == new_url  # type: ignore[union-attr]
        finally:
            await stage.stop()
