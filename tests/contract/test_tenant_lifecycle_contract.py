"""Deleting a tenant deletes everything it owns, on every backend (SQLite files; Cassandra with
the embedded bus): a real cloud process makes one of everything for a tenant through its REST
API, its pipeline and its stores — a user, device type, device, customer, assignment, every kind
of site record, a rule, presence intervals, events and a device state, a command invocation, a
batch operation, a schedule with a run, a connector with a dead letter, edge directory entries —
then the tenant is deleted: its user's token is refused at once, no store holds anything of it,
nothing of it is left on disk (files) or in Cassandra (keyspace, instance tables), and a tenant
created again under the same token starts empty.

The checks derive from the one list of tenant-owned stores (cloud/composition.py TenantStores): a
store added to the list without a probe here fails, and so does a tenant-owned store (or a
per-tenant cache) the cloud process builds but the list (or its forget path) lacks."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.bus import DECODED, Message, topic_name
from fieldgate.cloud.config import TenantConfig
from fieldgate.cloud.domain.batch import ScheduleRun
from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.ids import event_id
from fieldgate.cloud.store import TenantOwned
from fieldgate.cloud.store.cassandra.session import CassandraSession, instance_keyspace, keyspace_name
from fieldgate.cloud.store.connectors import DeadLetter
from fieldgate.cloud.store.edges import EdgeRecord
from fieldgate.cloud.store.events import EventQuery
from fieldgate.cloud.store.site import Kind
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from tests.contract.conftest import Backend
from tests.helpers.waiting import eventually

PASSWORD = "lifecycle-admin-password"
T = "acme"
SITE_KINDS: tuple[Kind, ...] = ("area_type", "area", "zone", "asset_type", "asset", "device_group")

Probe = Callable[[CloudApp, str], Awaitable[bool]]


# --- what each store holds of a tenant (True: something the test made) -------------------------


async def _registry(app: CloudApp, t: str) -> bool:
    reg = app.parts.registry
    return bool(
        (await reg.list_devices(t, 1, 10)).total
        or await reg.get_device_type(t, "sensor") is not None
        or (await reg.list_customer_types(t, 1, 10)).total
        or (await reg.list_customers(t, None, 1, 10)).total
        or (await reg.list_assignments(t, None, 1, 10)).total
    )


async def _users(app: CloudApp, t: str) -> bool:
    return bool(await app.parts.users.list_users(t))


async def _states(app: CloudApp, t: str) -> bool:
    # device states, rules and presence intervals (one rule row each)
    return bool(
        (await app.parts.state_store.list_states(t)).total or await app.parts.state_store.get_rules(t)
    )


async def _site(app: CloudApp, t: str) -> bool:
    return any([(await app.parts.site_store.find(t, kind, 1, 10)).total for kind in SITE_KINDS])


async def _connectors(app: CloudApp, t: str) -> bool:
    # connectors, their dead letters, their positions on the bus (where each goes on from)
    store = app.parts.connector_store
    return bool(
        await store.list_connectors(t)
        or await store.count_dead_letters(t, "hook")
        or await store.positions(t)
    )


async def _batch(app: CloudApp, t: str) -> bool:
    store = app.parts.batch_store
    return bool(
        (await store.list_operations(t, 1, 10))[1]
        or await store.list_schedules(t)
        or await store.list_runs(t, "nightly")
    )


async def _edges(app: CloudApp, t: str) -> bool:
    return any(
        t in e.tenants or e.edge_id == "edge-only-acme" for e in await app.parts.edge_directory.list_edges()
    )


async def _invocations(app: CloudApp, t: str) -> bool:
    return bool(await app.parts.invocations.list_pending(t))


async def _events(app: CloudApp, t: str) -> bool:
    return bool((await app.parts.event_store.list_device_events(EventQuery(tenant=t, device="d1"))).total)


#: One probe per tenant-owned store of the list, and the registry.
PROBES: dict[str, Probe] = {
    "registry": _registry,
    "users": _users,
    "states": _states,
    "site": _site,
    "connectors": _connectors,
    "batch": _batch,
    "edges": _edges,
    "invocations": _invocations,
    "events": _events,
}


async def holding(app: CloudApp, t: str) -> list[str]:
    """The stores that hold something of tenant ``t``."""
    return [name for name, probe in PROBES.items() if await probe(app, t)]


# --- the cloud -------------------------------------------------------------------------------


@pytest.fixture
async def cloud(backend: Backend) -> AsyncIterator[CloudApp]:
    config = backend.config.model_copy(
        update={"grpc_port": 0, "rest_port": 0, "tenants": (TenantConfig(token="default"),)}
    )
    app = CloudApp(config)
    await app.start()
    try:
        await app.ensure_admin(PASSWORD)
        yield app
    finally:
        await app.stop()


async def login(client: httpx.AsyncClient, user: str, password: str) -> dict[str, str]:
    r = await client.post("/api/v1/auth/token", data={"username": user, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def one_of_everything(app: CloudApp, client: httpx.AsyncClient, root: dict[str, str]) -> dict[str, str]:
    """Make one of everything for tenant T; the headers of its tenant admin."""
    h = {**root, "X-Fieldgate-Tenant": T}

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await client.post(path, json=body, headers=h)
        assert r.status_code == 201, f"{path}: {r.status_code} {r.text}"
        return dict(r.json())

    await post(
        "/api/v1/users",
        {"name": "acme-admin", "password": "acme-admin-password", "role": "tenant-admin", "tenant": T},
    )
    admin = await login(client, "acme-admin", "acme-admin-password")
    await post("/api/v1/device-types", {"token": "sensor", "commands": [{"name": "ping", "params": []}]})
    await post("/api/v1/devices", {"token": "d1", "device_type": "sensor"})
    await post("/api/v1/customer-types", {"token": "ct"})
    await post("/api/v1/customers", {"token": "c1", "customer_type": "ct"})
    await post("/api/v1/area-types", {"token": "at"})
    await post("/api/v1/areas", {"token": "a1", "area_type": "at"})
    await post("/api/v1/areas/a1/zones", {"token": "z1", "polygon": [[0, 0], [0, 1], [1, 1]]})
    await post("/api/v1/asset-types", {"token": "ast"})
    await post("/api/v1/assets", {"token": "pump", "asset_type": "ast"})
    await post("/api/v1/device-groups", {"token": "g1"})
    await post("/api/v1/device-groups/g1/elements", {"kind": "device", "token": "d1"})
    await post("/api/v1/assignments", {"device": "d1", "customer": "c1", "area": "a1", "asset": "pump"})
    await post(
        "/api/v1/rules",
        {
            "id": "hot",
            "kind": "threshold",
            "measurement": "t",
            "operator": ">",
            "value": 30,
            "level": "warning",
        },
    )
    r = await client.put("/api/v1/presence-intervals", json={"sensor": 60}, headers=h)
    assert r.status_code == 200, r.text
    await post("/api/v1/devices/d1/commands", {"command": "ping"})
    await post("/api/v1/batch-operations", {"command": "ping", "selection": {"devices": ["d1"]}})
    await post(
        "/api/v1/schedules",
        {
            "id": "nightly",
            "cron": "0 3 * * *",
            "action": {"kind": "command", "device": "d1", "command": "ping"},
        },
    )
    # A run of the schedule as the scheduler records it (its next due time is hours away).
    assert await app.parts.batch_store.claim_run(
        T, ScheduleRun(schedule="nightly", due_ms=1, replica="r", run_ms=1)
    )
    # A connector (disabled: no delivery is tried) with its start position, and a dead letter
    # as the stage keeps them.
    spec = {
        "id": "hook",
        "kind": "webhook",
        "enabled": False,
        "webhook": {"url": "https://hooks.example.com/x"},
    }
    await app.parts.connector_store.create(T, ConnectorSpec.model_validate(spec), start={0: 0})
    await app.parts.connector_store.add_dead_letters(
        T,
        [DeadLetter(connector="hook", event_id="e1", event=b"", reason="HTTP 500", attempts=3, failed_ms=1)],
    )
    # Edges ingest has seen: one carrying only this tenant, one carrying another tenant too.
    now = now_ms()
    await app.parts.edge_directory.put(
        EdgeRecord("edge-only-acme", "s1", connected_ms=now, last_seen_ms=now, tenants=frozenset({T}))
    )
    await app.parts.edge_directory.put(
        EdgeRecord("edge-shared", "s2", connected_ms=now, last_seen_ms=now, tenants=frozenset({T, "default"}))
    )
    # An event through the pipeline: stored, and the device's state.
    ev = pb.Event(tenant=T, device="d1", alternate_id="a1", event_time_ms=now, received_time_ms=now)
    ev.measurement.values["t"] = 21.5
    batch = pb.EventBatch(events=[ev])
    await app.parts.bus.publish(topic_name(T, DECODED), [Message(b"d1", batch.SerializeToString())])
    stored = event_id(T, "d1", "a1")

    async def through() -> bool:
        states = await app.parts.state_store.get_states(T, ["d1"])
        return await app.parts.event_store.get_event(T, stored) is not None and "d1" in states

    await eventually(through, timeout=60, what="the event stored and the device state written")
    return admin


async def nothing_on_disk(app: CloudApp, backend: Backend, t: str = T) -> list[str]:
    """What is left of tenant ``t`` where the backend keeps data (empty: nothing)."""
    if backend.kind == "sqlite":
        return sorted(str(p.relative_to(app.config.data_dir)) for p in app.config.data_dir.rglob(f"*{t}*"))
    prefix = app.config.store.keyspace_prefix
    session = CassandraSession(app.config.store.hosts[0], app.config.store.port)
    await session.start()
    try:
        left: list[str] = []
        if await session.keyspace_exists(keyspace_name(t, prefix)):
            left.append(f"keyspace {keyspace_name(t, prefix)}")
        ks = instance_keyspace(prefix)
        if await session.execute(f"SELECT tok FROM {ks}.tenants WHERE tok = %s", (t,)):
            left.append("tenant record")
        rows = await session.execute(f"SELECT tenant FROM {ks}.invocation_tenants WHERE bucket = 0")
        left += [f"invocation_tenants {r[0]}" for r in rows if r[0] == t]
        rows = await session.execute(f"SELECT name, tenant FROM {ks}.users")
        left += [f"user {r[0]}" for r in rows if r[1] == t]
        rows = await session.execute(f"SELECT edge_id, tenants FROM {ks}.edges WHERE bucket = 0")
        left += [f"edge {r[0]}" for r in rows if t in (r[1] or ())]
        return left
    finally:
        await session.stop()


async def test_deleting_a_tenant_deletes_everything_it_owns(cloud: CloudApp, backend: Backend) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cloud.rest_port}", timeout=60) as client:
        root = await login(client, "admin", PASSWORD)
        r = await client.post("/api/v1/tenants", json={"token": T}, headers=root)
        assert r.status_code == 201, r.text
        admin = await one_of_everything(cloud, client, root)
        # Every probe sees what was made (so that each can fail below).
        assert await holding(cloud, T) == list(PROBES)
        assert (await client.get("/api/v1/devices", headers=admin)).status_code == 200

        r = await client.delete(f"/api/v1/tenants/{T}?confirm={T}", headers=root)
        assert r.status_code == 200, r.text
        # Its users' tokens stop working at once (not at expiry).
        r = await client.get("/api/v1/devices", headers=admin)
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
        assert await holding(cloud, T) == []
        assert await nothing_on_disk(cloud, backend) == []
        # An edge that carried another tenant too stays, without this one.
        shared = [e for e in await cloud.parts.edge_directory.list_edges() if e.edge_id == "edge-shared"]
        assert [e.tenants for e in shared] == [frozenset({"default"})]
        # The other tenant kept everything.
        assert (await client.get("/api/v1/device-types/default", headers=root)).status_code == 200

        # Created again under the same token: it inherits nothing.
        r = await client.post("/api/v1/tenants", json={"token": T}, headers=root)
        assert r.status_code == 201, r.text
        assert await holding(cloud, T) == []
        h = {**root, "X-Fieldgate-Tenant": T}
        assert (await client.get("/api/v1/rules", headers=h)).json() == {"items": []}
        assert (await client.get("/api/v1/presence-intervals", headers=h)).json() == {}
        r = await client.post(
            "/api/v1/auth/token", data={"username": "acme-admin", "password": "acme-admin-password"}
        )
        assert r.status_code == 401


async def test_deleting_a_tenant_with_nothing_creates_nothing(cloud: CloudApp, backend: Backend) -> None:
    for name, store in cloud.parts.tenant_stores.owned():
        assert await store.delete_tenant("ghost") is False, name
    assert await nothing_on_disk(cloud, backend, "ghost") == []


def test_every_tenant_owned_store_of_the_cloud_is_in_the_list(tmp_path: Path) -> None:
    """Derived, so that the next store cannot be forgotten: each tenant-owned store the cloud
    process builds is in TenantStores (or is the registry), each has a probe above, and each
    part of the process that caches per tenant is forgotten when a tenant is deleted."""
    from fieldgate.cloud.config import CloudConfig

    app = CloudApp(CloudConfig(data_dir=tmp_path, grpc_port=0, rest_port=0))
    listed = {id(store) for _name, store in app.parts.tenant_stores.owned()}
    # What the process holds: its shared parts (cloud/composition.py Parts) and its own attributes.
    shared = {f.name: getattr(app.parts, f.name) for f in dataclasses.fields(app.parts)}
    parts = {name: value for name, value in {**vars(app), **shared}.items() if value is not None}
    owned = {
        name
        for name, value in parts.items()
        if value is not app.parts.registry and isinstance(value, TenantOwned)
    }
    assert {name for name in owned if id(parts[name]) not in listed} == set()
    assert set(PROBES) == {name for name, _store in app.parts.tenant_stores.owned()} | {"registry"}
    forgotten = listed | {id(app.parts.registry)} | {id(c) for c in app.tenant_caches()}
    caching = [*parts.items(), *((f"stage {type(s).__name__}", s) for s in app.runs)]
    missing = [
        name
        for name, value in caching
        if callable(getattr(value, "forget_tenant", None)) and id(value) not in forgotten
    ]
    assert missing == []
