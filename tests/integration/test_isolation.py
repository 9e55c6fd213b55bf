"""Tenant and role isolation, generated from the app itself.

REST: every ``RouteContext`` of the real ``create_api`` app must declare one access policy
(cloud/services/access.py), and is then exercised with real requests against real data of tenant
``default`` (A): without a token → 401; as tenant ``beta``'s admin (B) → 403/404 or B's own
(empty) data, never anything of A; as each role of A → 403 exactly where the role lacks the
route's permission; as a customer user of A (customer ``c1``) → only c1's things (another
customer's device, assignment, invocation → 404; lists without them). Path parameters are
filled from :data:`PATH_SAMPLES` and bodies from :data:`BODY_SAMPLES`; a route with a parameter
or body model these tables do not know fails, so a new route gets attention here.

gRPC: every method of the service descriptors must be in ``GRPC_METHODS``; each served one
refuses no token, B's token, roles without the permission and customer users, and lets the
roles with it through.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fastapi.routing import RouteContext
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from fieldgate.cloud.api.grpc.server import ApiAuth, add_grpc_api
from fieldgate.cloud.services.access import (
    GRANTS,
    GRPC_METHODS,
    PUBLIC,
    TENANT_HEADER,
    Permission,
    Principal,
    Role,
    api_routes,
    route_policies,
)
from fieldgate.cloud.services.auth import TokenAuthority
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.api_stack import SECRET, USERS, ApiStack, api_stack, login
from tests.helpers.grpc_auth import bearer

pytestmark = pytest.mark.integration

A, B = "default", "beta"
# Routes anyone may call; a route added here is a decision, not an accident.
PUBLIC_ROUTES = {
    ("POST", "/api/v1/auth/token"),
    ("GET", "/"),
    ("GET", "/assets/{path:path}"),  # the dashboard's built files (cloud/api/rest/dashboard.py)
    ("GET", "/healthz"),
    # the API's own documentation, served from the package (cloud/api/rest/api_docs.py)
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/docs/static/{path:path}"),
    ("GET", "/redoc"),
}
ROLE_USERS = {Role.TENANT_ADMIN: "admin", Role.OPERATOR: "olga", Role.VIEWER: "vera", Role.CUSTOMER: "cora"}
ROLE_USERS_ALL = {**ROLE_USERS, Role.INSTANCE_ADMIN: "root"}

# Strings only tenant A's data contains (never sent in a request of this test): a body that
# shows one has leaked it. C1/C2: things of customer c1 / c2.
C1_MARKS = ("A-SECRET-DEV-C1", "A-SECRET-AREA-C1", "A-SECRET-EV-C1", "A-SECRET-CUST-C1")
C2_MARKS = ("A-SECRET-DEV-C2", "A-SECRET-AREA-C2", "A-SECRET-EV-C2", "A-SECRET-CUST-C2")
A_MARKS = ("A-SECRET-TYPE", *C1_MARKS, *C2_MARKS)


@dataclass
class TenantA:
    """Tenant A's things, per customer: what the path samples name."""

    c1: dict[str, str]
    c2: dict[str, str]


# (the path segment before the parameter, the parameter) → which thing of TenantA it names;
# None in the c2 column: a thing that is not a customer's (device types, users).
PATH_SAMPLES: dict[tuple[str, str], tuple[str, str | None]] = {
    ("device-types", "token"): ("type", None),
    ("devices", "token"): ("device", "device"),
    ("assignments", "token"): ("assignment", "assignment"),
    ("invocations", "invocation_id"): ("invocation", "invocation"),
    ("users", "name"): ("user", None),
    ("customer-types", "token"): ("ctype", None),
    ("customers", "token"): ("customer", "customer"),
    ("batch-operations", "operation_id"): ("batch", None),
    ("schedules", "schedule_id"): ("schedule", None),
    ("area-types", "token"): ("atype", None),
    ("areas", "token"): ("area", None),
    ("zones", "token"): ("zone", None),
    ("asset-types", "token"): ("asttype", None),
    ("assets", "token"): ("asset", None),
    ("device-groups", "token"): ("group", None),
    ("elements", "element"): ("device", None),
}
_serial = itertools.count()


def _body_for(model: str, things: dict[str, str]) -> dict[str, Any]:
    n = next(_serial)
    samples: dict[str, dict[str, Any]] = {
        "DeviceTypeIn": {"token": f"new-type-{n}", "name": "n", "commands": []},
        "DeviceIn": {"token": f"new-dev-{n}", "device_type": things["type"]},
        "DeviceTypeChange": {"name": "renamed", "commands": [{"name": "ping"}]},
        "DeviceChange": {"device_type": things["type"], "comments": "changed"},
        "AssignmentIn": {"device": things["device"], "customer": "c1"},
        "CommandRequest": {"command": "ping", "params": {}},
        "UserIn": {"name": f"new-user-{n}", "password": "pw-123456", "role": "viewer"},
        "UserPatch": {"role": "viewer"},
        "CustomerTypeIn": {"token": f"new-ctype-{n}"},
        "CustomerTypeChange": {"name": "renamed"},
        "CustomerIn": {"token": f"new-cust-{n}", "customer_type": things["ctype"]},
        "CustomerChange": {"customer_type": things["ctype"]},
        "BatchRequest": {"command": "ping", "selection": {"devices": [things["device"]]}},
        "ScheduleIn": {
            "id": things.get("schedule", f"new-sched-{n}"),
            "cron": "0 3 * * *",
            "action": {"kind": "command", "device": things["device"], "command": "ping"},
        },
        "SiteTypeIn": {"token": f"new-stype-{n}"},
        "SiteTypeChange": {"name": "renamed"},
        "AreaIn": {"token": f"new-area-{n}", "area_type": things["atype"]},
        "AreaChange": {"area_type": things["atype"]},
        "ZoneIn": {"token": f"new-zone-{n}", "polygon": [[1, 1], [1, 2], [2, 2]]},
        "ZoneMove": {"area": things["area"], "polygon": [[1, 1], [1, 2], [2, 2]]},
        "AssetIn": {"token": f"new-asset-{n}", "asset_type": things["asttype"]},
        "AssetChange": {"asset_type": things["asttype"]},
        "DeviceGroupIn": {"token": f"new-group-{n}"},
        "DeviceGroupChange": {"name": "renamed"},
        "ElementIn": {"kind": "device", "token": things["device"]},
    }
    if model not in samples:
        pytest.fail(f"no sample body for request model {model}: add one to BODY_SAMPLES")
    return samples[model]


BODY_SAMPLES = _body_for  # the table, as a function (fresh tokens per call)


def permission_of(route: RouteContext) -> Permission | str:
    policies = route_policies(route)
    assert len(policies) == 1, f"{route.path}: {policies}"
    return policies[0]


def fill(route: RouteContext, things: dict[str, str]) -> str:
    path = str(route.path_format)
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part.startswith("{"):
            key = (parts[i - 1], part.strip("{}"))
            if key not in PATH_SAMPLES:
                pytest.fail(f"{route.path}: no sample for path parameter {key}: add it to PATH_SAMPLES")
            parts[i] = things[PATH_SAMPLES[key][0]]
    return "/".join(parts)


def customer_scoped(route: RouteContext) -> bool:
    """Whether the route names a customer's thing (c1 and c2 samples differ)."""
    parts = str(route.path_format).split("/")
    return any(
        PATH_SAMPLES.get((parts[i - 1], p.strip("{}")), ("", None))[1] is not None
        for i, p in enumerate(parts)
        if p.startswith("{")
    )


def body(route: RouteContext, things: dict[str, str]) -> dict[str, Any] | None:
    if route.body_field is None:
        return None
    annotation = route.body_field.field_info.annotation
    return BODY_SAMPLES(getattr(annotation, "__name__", str(annotation)), things)


async def send(
    client: httpx.AsyncClient,
    route: RouteContext,
    things: dict[str, str],
    headers: dict[str, str] | None = None,
) -> tuple[httpx.Response, str]:
    (method,) = list(route.methods or ())
    path = fill(route, things)
    payload = body(route, things)
    r = await client.request(method, path, json=payload, headers=headers or {})
    return r, f"{method} {path} {payload or ''}"


def leaked(r: httpx.Response, request: str, marks: tuple[str, ...]) -> list[str]:
    return [m for m in marks if m in r.text and m not in request]


async def make_tenant_a(stack: ApiStack, client: httpx.AsyncClient) -> TenantA:
    admin = await login(client, "admin")

    async def post(path: str, payload: dict[str, Any]) -> dict[str, Any]:
        r = await client.post(path, json=payload, headers=admin)
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result

    await post(
        "/api/v1/device-types",
        {"token": "a-type", "description": "A-SECRET-TYPE", "commands": [{"name": "ping"}]},
    )
    has_customers = any(r.path_format == "/api/v1/customers" for r in api_routes(stack.app))
    if has_customers:
        await post("/api/v1/customer-types", {"token": "a-ctype"})
    site: dict[str, str] = {}
    if any(r.path_format == "/api/v1/areas" for r in api_routes(stack.app)):  # the site model
        secret = {"description": "A-SECRET-TYPE"}
        await post("/api/v1/area-types", {"token": "a-atype", **secret})
        await post("/api/v1/areas", {"token": "a-area", "area_type": "a-atype", **secret})
        zone = {"token": "a-zone", "polygon": [[1, 1], [1, 2], [2, 2]], **secret}
        await post("/api/v1/areas/a-area/zones", zone)
        await post("/api/v1/asset-types", {"token": "a-asttype", **secret})
        await post("/api/v1/assets", {"token": "a-asset", "asset_type": "a-asttype", **secret})
        await post("/api/v1/device-groups", {"token": "a-group", **secret})
        site = {"atype": "a-atype", "area": "a-area", "zone": "a-zone", "asttype": "a-asttype"}
        site |= {"asset": "a-asset", "group": "a-group"}
    per: dict[str, dict[str, str]] = {}
    for c in ("c1", "c2"):
        mark = c.upper()
        if has_customers:
            await post(
                "/api/v1/customers", {"token": c, "customer_type": "a-ctype", "name": f"A-SECRET-CUST-{mark}"}
            )
        device = f"dev-{c}"
        await post(
            "/api/v1/devices", {"token": device, "device_type": "a-type", "comments": f"A-SECRET-DEV-{mark}"}
        )
        # An assignment's area must exist (422 otherwise) and areas are the whole tenant's:
        # with the site model the customer's secret travels in the assignment's metadata.
        secret_area = f"A-SECRET-AREA-{mark}"
        asg = await post(
            "/api/v1/assignments",
            {"device": device, "customer": c, "area": "a-area", "metadata": {"where": secret_area}}
            if site
            else {"device": device, "customer": c, "area": secret_area},
        )
        event = pb.Event(
            tenant=A,
            device=device,
            assignment=asg["token"],
            event_time_ms=1_700_000_000_000,
            received_time_ms=1_700_000_000_005,
            metadata={"note": f"A-SECRET-EV-{mark}"},
            measurement=pb.Measurement(values={"t": 21.5}),
        )
        assert await stack.event_store.add(A, [event])
        inv = await post(f"/api/v1/devices/{device}/commands", {"command": "ping", "params": {}})
        per[c] = {
            "type": "a-type",
            "device": device,
            "assignment": asg["token"],
            "invocation": inv["id"],
            "user": "vera",
            "ctype": "a-ctype",
            "customer": c,
            **site,
        }
        if site:
            await post("/api/v1/device-groups/a-group/elements", {"kind": "device", "token": device})
    if any(r.path_format == "/api/v1/batch-operations" for r in api_routes(stack.app)):
        op = await post(
            "/api/v1/batch-operations", {"command": "ping", "selection": {"devices": ["dev-c1", "dev-c2"]}}
        )
        action = {"kind": "command", "device": "dev-c1", "command": "ping"}
        await post("/api/v1/schedules", {"id": "a-sched", "cron": "0 3 * * *", "action": action})
        for things in per.values():
            things |= {"batch": op["operation"]["id"], "schedule": "a-sched"}
    return TenantA(per["c1"], per["c2"])


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(tmp_path) as s:
        yield s


def test_every_route_declares_one_policy_and_the_public_ones_are_known(stack: ApiStack) -> None:
    routes = api_routes(stack.app)
    assert len(routes) >= 20
    public = {(m, r.path) for r in routes for m in r.methods or () if permission_of(r) == PUBLIC}
    assert public == PUBLIC_ROUTES
    for r in routes:
        assert len(r.methods or ()) == 1, f"{r.path}: one method per route, so each gets its own check"


async def test_every_route_keeps_tenants_and_roles_apart(stack: ApiStack) -> None:
    routes = [r for r in api_routes(stack.app) if permission_of(r) != PUBLIC]
    async with stack.client() as client:
        a = await make_tenant_a(stack, client)
        tokens = {role: await login(client, user) for role, user in ROLE_USERS_ALL.items()}
        b_admin = await login(client, "bob")
        checked = 0
        for route in routes:
            permission = permission_of(route)
            assert isinstance(permission, Permission)
            # no token, a garbage token → 401
            for headers in ({}, {"Authorization": "Bearer garbage"}):
                r, what = await send(client, route, a.c1, headers)
                assert r.status_code == 401, what
            # tenant B's admin: refused, not found, or B's own (empty) data — never A's
            for headers in (b_admin, b_admin | {TENANT_HEADER: A}):
                r, what = await send(client, route, a.c1, headers)
                assert r.status_code < 500, f"{what}: {r.text}"
                if str(route.path_format).count("{") or TENANT_HEADER in headers:
                    assert r.status_code in (403, 404, 422), f"B: {what}: {r.status_code} {r.text}"
                assert not leaked(r, what, A_MARKS), f"B: {what}: {r.text}"
            # roles of A without the permission → 403, and nothing of A
            for role, headers in tokens.items():
                if permission not in GRANTS[role]:
                    r, what = await send(client, route, a.c1, headers)
                    assert r.status_code == 403, f"{role}: {what}: {r.status_code} {r.text}"
                    assert not leaked(r, what, A_MARKS), f"{role}: {what}"
            # the customer user sees c1's things only
            if permission in GRANTS[Role.CUSTOMER]:
                cust = tokens[Role.CUSTOMER]
                r, what = await send(client, route, a.c1, cust)
                assert r.status_code == 200, f"customer, own: {what}: {r.status_code} {r.text}"
                assert not leaked(r, what, C2_MARKS), f"customer, own: {what}: {r.text}"
                if customer_scoped(route):
                    r, what = await send(client, route, a.c2, cust)
                    assert r.status_code == 404, f"customer, other's: {what}: {r.status_code} {r.text}"
                    assert not leaked(r, what, A_MARKS), f"customer, other's: {what}"
            checked += 1
        # Last (they change things): the roles with the permission get through.
        for route in sorted(routes, key=lambda r: "DELETE" in (r.methods or ())):
            permission = permission_of(route)
            for role, headers in tokens.items():
                if permission in GRANTS[role] and role is not Role.CUSTOMER:
                    r, what = await send(client, route, a.c1, headers)
                    assert r.status_code not in (401, 403) and r.status_code < 500, (
                        f"{role}: {what}: {r.status_code} {r.text}"
                    )
        assert checked == len(routes)


async def test_customer_lists_hold_only_their_customers_things(stack: ApiStack) -> None:
    async with stack.client() as client:
        a = await make_tenant_a(stack, client)
        cust = await login(client, "cora")
        devices = (await client.get("/api/v1/devices", headers=cust)).json()
        assert [d["token"] for d in devices["items"]] == ["dev-c1"] and devices["total"] == 1
        asgs = (await client.get("/api/v1/assignments", headers=cust)).json()
        assert [x["token"] for x in asgs["items"]] == [a.c1["assignment"]]
        assert (await client.get("/api/v1/assignments?device=dev-c2", headers=cust)).json()["items"] == []
        events = (await client.get("/api/v1/devices/dev-c1/events", headers=cust)).json()
        assert [e["metadata"]["note"] for e in events["items"]] == ["A-SECRET-EV-C1"]
        # once c1's assignment is released, dev-c1 is no longer c1's device
        admin = await login(client, "admin")
        r = await client.post(f"/api/v1/assignments/{a.c1['assignment']}/release", headers=admin)
        assert r.status_code == 200
        assert (await client.get("/api/v1/devices/dev-c1", headers=cust)).status_code == 404
        assert (await client.get("/api/v1/devices", headers=cust)).json()["items"] == []
        # the (released) assignment named c1: still c1's history
        r = await client.get(f"/api/v1/assignments/{a.c1['assignment']}/events", headers=cust)
        assert r.status_code == 200 and r.json()["total"] == 1


async def test_only_instance_admins_act_for_another_tenant(stack: ApiStack) -> None:
    async with stack.client() as client:
        await make_tenant_a(stack, client)
        root = await login(client, "root")
        admin = await login(client, "admin")
        r = await client.get("/api/v1/devices", headers=root | {TENANT_HEADER: B})
        assert r.status_code == 200 and r.json()["items"] == []
        r = await client.get("/api/v1/devices", headers=root)
        assert {d["token"] for d in r.json()["items"]} == {"dev-c1", "dev-c2"}
        assert (await client.get("/api/v1/devices", headers=admin | {TENANT_HEADER: B})).status_code == 403
        assert (
            await client.get("/api/v1/devices", headers=root | {TENANT_HEADER: "nope"})
        ).status_code == 404
        r = await client.get("/api/v1/devices", headers=root | {TENANT_HEADER: "../x"})
        assert r.status_code == 422


# --- gRPC ----------------------------------------------------------------------------------------

NOT_TOKEN_SERVICES = {"EdgeUplink"}  # the client certificate is its credential (ingest)
DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def grpc_methods() -> Iterator[MethodDescriptor]:
    for service in svc.DESCRIPTOR.services_by_name.values():
        if service.name not in NOT_TOKEN_SERVICES:
            yield from service.methods


def test_every_grpc_method_is_in_the_access_policy() -> None:
    missing = [m.full_name for m in grpc_methods() if m.full_name not in GRPC_METHODS]
    assert not missing, f"add these to cloud/services/access.py GRPC_METHODS: {missing}"
    stale = set(GRPC_METHODS) - {m.full_name for m in grpc_methods()}
    assert not stale, stale


def grpc_request(method: MethodDescriptor, tenant: str) -> Message:
    request = message_factory.GetMessageClass(method.input_type)()
    if "tenant" in method.input_type.fields_by_name:
        request.tenant = tenant  # type: ignore[attr-defined]
        return request
    for field in method.input_type.fields:
        if field.message_type is not None and "tenant" in field.message_type.fields_by_name:
            getattr(request, field.name).tenant = tenant
    return request


async def call(
    channel: grpc.aio.Channel, method: MethodDescriptor, request: Message, metadata: Any
) -> grpc.StatusCode:
    stub = channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=message_factory.GetMessageClass(method.output_type).FromString,
    )
    try:
        await stub(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def grpc_token(role: Role, tenant: str = A) -> tuple[tuple[str, str], ...]:
    customer = "c1" if role is Role.CUSTOMER else None
    principal = Principal(user=f"u-{role.value}", tenant=tenant, role=role, customer=customer)
    return bearer(TokenAuthority(SECRET, 3600).issue(principal))


async def test_every_grpc_method_checks_role_and_tenant(stack: ApiStack) -> None:
    server = grpc.aio.server()
    add_grpc_api(
        server,
        registry=stack.registry,
        event_store=stack.event_store,
        invocations=stack.invocations,
        commands=stack.commands,
        auth=ApiAuth(TokenAuthority(SECRET, 3600)),
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    served = 0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in grpc_methods():
                request = grpc_request(method, A)
                first = await call(channel, method, request, None)
                if first == grpc.StatusCode.UNIMPLEMENTED:
                    continue  # a service this server does not register: unreachable
                served += 1
                name = method.full_name
                assert first == grpc.StatusCode.UNAUTHENTICATED, name
                permission = GRPC_METHODS[name]
                for role in Role:
                    code = await call(channel, method, request, grpc_token(role))
                    if role is Role.CUSTOMER or permission not in GRANTS[role]:
                        assert code == grpc.StatusCode.PERMISSION_DENIED, (name, role, code)
                    else:
                        assert code not in DENIED, (name, role, code)
                    if role is not Role.INSTANCE_ADMIN and permission is not Permission.INSTANCE_ADMIN:
                        other = await call(channel, method, request, grpc_token(role, B))
                        assert other == grpc.StatusCode.PERMISSION_DENIED, (name, role, "tenant B")
    finally:
        await server.stop(grace=None)
    assert served >= 13


def test_the_role_table_is_the_documented_one() -> None:
    assert {u: USERS[u][2] for u in ROLE_USERS_ALL.values()} == {u: r for r, u in ROLE_USERS_ALL.items()}
    assert GRANTS[Role.VIEWER] == {Permission.READ} == GRANTS[Role.CUSTOMER]
    assert GRANTS[Role.OPERATOR] == {Permission.READ, Permission.COMMAND}
    assert Permission.INSTANCE_ADMIN not in GRANTS[Role.TENANT_ADMIN]
    assert GRANTS[Role.INSTANCE_ADMIN] == set(Permission)
