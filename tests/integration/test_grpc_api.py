"""The gRPC management APIs on a real grpc.aio server (127.0.0.1, port 0) over real stores."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest

from fieldgate.cloud.api.grpc.server import ApiAuth, add_grpc_api
from fieldgate.cloud.services.auth import TokenAuthority
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc
from tests.helpers.api_stack import SECRET, ApiStack, api_stack
from tests.helpers.grpc_auth import TenantTokenInterceptor

pytestmark = pytest.mark.integration

T0 = 1_714_564_800_000

THERMOSTAT = model.DeviceType(
    token="thermostat",
    name="Thermostat",
    commands=[
        model.DeviceCommand(name="ping"),
        model.DeviceCommand(
            name="set-interval",
            params=[model.CommandParam(name="seconds", type=model.PARAM_TYPE_INT, required=True)],
        ),
    ],
)


@dataclass
class Clients:
    stack: ApiStack
    devices: svc_grpc.DeviceManagementAsyncStub
    events: svc_grpc.EventQueriesAsyncStub
    commands: svc_grpc.CommandInvocationsAsyncStub


@pytest.fixture
async def grpc_api(tmp_path: Path) -> AsyncIterator[Clients]:
    async with api_stack(tmp_path) as stack:
        server = grpc.aio.server()
        authority = TokenAuthority(SECRET, 3600)
        add_grpc_api(
            server,
            registry=stack.registry,
            event_store=stack.event_store,
            invocations=stack.invocations,
            commands=stack.commands,
            auth=ApiAuth(authority),
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            # Every call as a caller of the tenant it names (authentication: test_grpc_auth.py).
            interceptors = [cast(grpc.aio.ClientInterceptor, TenantTokenInterceptor(authority))]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as channel:
                yield Clients(
                    stack,
                    svc_grpc.DeviceManagementStub(channel),
                    svc_grpc.EventQueriesStub(channel),
                    svc_grpc.CommandInvocationsStub(channel),
                )
        finally:
            await server.stop(grace=None)


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


async def _setup(c: Clients, tenant: str = "default", device: str = "d-1") -> None:
    await c.devices.CreateDeviceType(svc.CreateDeviceTypeRequest(tenant=tenant, device_type=THERMOSTAT))
    await c.devices.CreateDevice(
        svc.CreateDeviceRequest(device=model.Device(token=device, tenant=tenant, device_type="thermostat"))
    )


async def test_device_management_round_trip_and_status_codes(grpc_api: Clients) -> None:
    c = grpc_api
    await _setup(c)
    types = await c.devices.ListDeviceTypes(svc.ListDeviceTypesRequest(tenant="default"))
    assert types.total == 1 and types.device_types[0] == THERMOSTAT

    dev = await c.devices.GetDevice(svc.GetDeviceRequest(tenant="default", token="d-1"))
    assert dev.device_type == "thermostat" and dev.tenant == "default" and dev.created_ms > 0
    for i in range(2, 6):
        await c.devices.CreateDevice(
            svc.CreateDeviceRequest(
                device=model.Device(token=f"d-{i}", tenant="default", device_type="thermostat")
            )
        )
    page = await c.devices.ListDevices(
        svc.ListDevicesRequest(tenant="default", page=svc.PageRequest(page=2, page_size=2))
    )
    assert page.total == 5 and len(page.devices) == 2

    # An assignment's customer must exist (CustomerManagement); an unknown one is refused.
    unknown = svc.CreateAssignmentRequest(
        assignment=model.Assignment(tenant="default", device="d-1", customer="acme")
    )
    assert await _code(c.devices.CreateAssignment(unknown)) == grpc.StatusCode.INVALID_ARGUMENT
    await c.stack.registry.create_customer_type("default", model.CustomerType(token="site"))
    await c.stack.registry.create_customer("default", model.Customer(token="acme", customer_type="site"))
    a = await c.devices.CreateAssignment(
        svc.CreateAssignmentRequest(
            assignment=model.Assignment(tenant="default", device="d-1", customer="acme")
        )
    )
    assert a.token and a.status == model.ASSIGNMENT_STATUS_ACTIVE
    listed = await c.devices.ListAssignments(svc.ListAssignmentsRequest(tenant="default", device="d-1"))
    assert [x.token for x in listed.assignments] == [a.token]
    released = await c.devices.ReleaseAssignment(
        svc.ReleaseAssignmentRequest(tenant="default", token=a.token)
    )
    assert released.status == model.ASSIGNMENT_STATUS_RELEASED

    dup = svc.CreateDeviceTypeRequest(tenant="default", device_type=THERMOSTAT)
    assert await _code(c.devices.CreateDeviceType(dup)) == grpc.StatusCode.ALREADY_EXISTS
    missing = svc.GetDeviceRequest(tenant="default", token="ghost")
    assert await _code(c.devices.GetDevice(missing)) == grpc.StatusCode.NOT_FOUND
    bad_type = svc.CreateDeviceRequest(device=model.Device(token="d-9", tenant="default", device_type="nope"))
    assert await _code(c.devices.CreateDevice(bad_type)) == grpc.StatusCode.INVALID_ARGUMENT
    untyped = model.DeviceType(
        token="t2", commands=[model.DeviceCommand(name="x", params=[model.CommandParam(name="p")])]
    )
    req = svc.CreateDeviceTypeRequest(tenant="default", device_type=untyped)
    assert await _code(c.devices.CreateDeviceType(req)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(c.devices.ListDevices(svc.ListDevicesRequest())) == grpc.StatusCode.INVALID_ARGUMENT
    other = svc.ListDevicesRequest(tenant="no-such-tenant")
    assert await _code(c.devices.ListDevices(other)) == grpc.StatusCode.NOT_FOUND
    traversal = svc.ListDevicesRequest(tenant="../../etc")
    assert await _code(c.devices.ListDevices(traversal)) == grpc.StatusCode.NOT_FOUND
    huge = svc.ListDevicesRequest(tenant="default", page=svc.PageRequest(page_size=5000))
    assert await _code(c.devices.ListDevices(huge)) == grpc.StatusCode.INVALID_ARGUMENT
    assert (await c.devices.ListDevices(svc.ListDevicesRequest(tenant="beta"))).total == 0


async def test_event_queries_filter_and_page(grpc_api: Clients) -> None:
    c = grpc_api
    await _setup(c)
    events = [
        pb.Event(
            tenant="default",
            device="d-1",
            alternate_id=f"m{i}",
            event_time_ms=T0 + i,
            measurement=pb.Measurement(values={"v": float(i)}),
        )
        for i in range(20)
    ]
    events.append(
        pb.Event(tenant="default", device="d-1", alternate_id="a", event_time_ms=T0 + 100, alert=pb.Alert())
    )
    await c.stack.event_store.add("default", events)

    everything = await c.events.ListDeviceEvents(svc.ListDeviceEventsRequest(tenant="default", device="d-1"))
    assert everything.total == 21 and everything.events[0].alternate_id == "a"
    window = await c.events.ListDeviceEvents(
        svc.ListDeviceEventsRequest(
            tenant="default",
            device="d-1",
            type=svc.EVENT_TYPE_MEASUREMENT,
            since_ms=T0 + 5,
            until_ms=T0 + 14,
            page=svc.PageRequest(page=2, page_size=4),
        )
    )
    assert window.total == 10 and [e.alternate_id for e in window.events] == ["m10", "m9", "m8", "m7"]
    missing = svc.ListDeviceEventsRequest(tenant="default", device="ghost")
    assert await _code(c.events.ListDeviceEvents(missing)) == grpc.StatusCode.NOT_FOUND
    bad = svc.ListDeviceEventsRequest(tenant="default", device="d-1", type=99)  # type: ignore[arg-type]
    assert await _code(c.events.ListDeviceEvents(bad)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_command_invocations(grpc_api: Clients) -> None:
    c = grpc_api
    await _setup(c)
    inv = await c.commands.Invoke(
        svc.InvokeCommandRequest(
            tenant="default", device="d-1", command="set-interval", params_json='{"seconds": 5}', ttl_s=30
        )
    )
    assert inv.status == svc.COMMAND_STATUS_QUEUED and json.loads(inv.params_json) == {"seconds": 5}
    assert inv.expires_ms - inv.created_ms == 30_000
    got = await c.commands.GetInvocation(svc.GetInvocationRequest(tenant="default", id=inv.id))
    assert got == inv
    ping = await c.commands.Invoke(svc.InvokeCommandRequest(tenant="default", device="d-1", command="ping"))
    assert ping.expires_ms - ping.created_ms == 3600_000  # the default ttl

    for bad in (
        svc.InvokeCommandRequest(
            tenant="default", device="d-1", command="set-interval", params_json='{"seconds": "5"}'
        ),
        svc.InvokeCommandRequest(tenant="default", device="d-1", command="set-interval", params_json="{"),
        svc.InvokeCommandRequest(tenant="default", device="d-1", command="set-interval", params_json="[5]"),
        svc.InvokeCommandRequest(tenant="default", device="d-1", command="reboot"),
        svc.InvokeCommandRequest(tenant="default", device="d-1", command="ping", ttl_s=10**6),
    ):
        assert await _code(c.commands.Invoke(bad)) == grpc.StatusCode.INVALID_ARGUMENT, bad
    ghost = svc.InvokeCommandRequest(tenant="default", device="ghost", command="ping")
    assert await _code(c.commands.Invoke(ghost)) == grpc.StatusCode.NOT_FOUND
    # another tenant cannot read it
    other = svc.GetInvocationRequest(tenant="beta", id=inv.id)
    assert await _code(c.commands.GetInvocation(other)) == grpc.StatusCode.NOT_FOUND


async def test_assignment_events_filter_page_and_status_codes(grpc_api: Clients) -> None:
    c = grpc_api
    await _setup(c)
    a = await c.devices.CreateAssignment(
        svc.CreateAssignmentRequest(assignment=model.Assignment(tenant="default", device="d-1"))
    )
    events = [
        pb.Event(
            tenant="default",
            device="d-1",
            assignment=a.token,
            alternate_id=f"m{i}",
            event_time_ms=T0 + i,
            measurement=pb.Measurement(values={"v": float(i)}),
        )
        for i in range(20)
    ]
    events.append(
        pb.Event(
            tenant="default",
            device="d-1",
            assignment=a.token,
            alternate_id="a",
            event_time_ms=T0 + 100,
            alert=pb.Alert(),
        )
    )
    events.append(pb.Event(tenant="default", device="d-1", alternate_id="free", event_time_ms=T0 + 200))
    await c.stack.event_store.add("default", events)

    everything = await c.events.ListAssignmentEvents(
        svc.ListAssignmentEventsRequest(tenant="default", assignment=a.token)
    )
    assert everything.total == 21 and everything.events[0].alternate_id == "a"
    assert {e.assignment for e in everything.events} == {a.token}
    window = await c.events.ListAssignmentEvents(
        svc.ListAssignmentEventsRequest(
            tenant="default",
            assignment=a.token,
            type=svc.EVENT_TYPE_MEASUREMENT,
            since_ms=T0 + 5,
            until_ms=T0 + 14,
            page=svc.PageRequest(page=2, page_size=4),
        )
    )
    assert window.total == 10 and [e.alternate_id for e in window.events] == ["m10", "m9", "m8", "m7"]

    ghost = svc.ListAssignmentEventsRequest(tenant="default", assignment="ghost")
    assert await _code(c.events.ListAssignmentEvents(ghost)) == grpc.StatusCode.NOT_FOUND
    empty = svc.ListAssignmentEventsRequest(tenant="default")
    assert await _code(c.events.ListAssignmentEvents(empty)) == grpc.StatusCode.NOT_FOUND
    other = svc.ListAssignmentEventsRequest(tenant="beta", assignment=a.token)
    assert await _code(c.events.ListAssignmentEvents(other)) == grpc.StatusCode.NOT_FOUND
    for bad in (
        svc.ListAssignmentEventsRequest(tenant="default", assignment=a.token, type=99),  # type: ignore[arg-type]
        svc.ListAssignmentEventsRequest(
            tenant="default", assignment=a.token, page=svc.PageRequest(page_size=5000)
        ),
        svc.ListAssignmentEventsRequest(tenant="default", assignment=a.token, since_ms=-1),
    ):
        assert await _code(c.events.ListAssignmentEvents(bad)) == grpc.StatusCode.INVALID_ARGUMENT, bad


async def test_an_invocation_with_its_events(grpc_api: Clients) -> None:
    c = grpc_api
    await _setup(c)
    inv = await c.commands.Invoke(svc.InvokeCommandRequest(tenant="default", device="d-1", command="ping"))
    req = svc.ListInvocationEventsRequest(tenant="default", id=inv.id)
    before = await c.events.ListInvocationEvents(req)
    assert before.invocation == inv and list(before.events) == []

    sent = pb.Event(
        tenant="default",
        device="d-1",
        id=inv.id,
        alternate_id=inv.id,
        event_time_ms=inv.created_ms,
        command_invocation=pb.CommandInvocation(invocation=inv.id, command="ping"),
    )
    answer = pb.Event(
        tenant="default",
        device="d-1",
        alternate_id="r1",
        event_time_ms=inv.created_ms + 50,
        command_response=pb.CommandResponse(invocation=inv.id, response_json='{"pong": true}'),
    )
    await c.stack.event_store.add("default", [answer, sent])
    after = await c.events.ListInvocationEvents(req)
    assert [e.WhichOneof("payload") for e in after.events] == ["command_invocation", "command_response"]
    assert after.events[0].id == inv.id and after.events[1].command_response.response_json == '{"pong": true}'

    unknown = svc.ListInvocationEventsRequest(tenant="default", id="nope")
    assert await _code(c.events.ListInvocationEvents(unknown)) == grpc.StatusCode.NOT_FOUND
    other = svc.ListInvocationEventsRequest(tenant="beta", id=inv.id)
    assert await _code(c.events.ListInvocationEvents(other)) == grpc.StatusCode.NOT_FOUND
    no_tenant = svc.ListInvocationEventsRequest(id=inv.id)
    assert await _code(c.events.ListInvocationEvents(no_tenant)) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def site_api(
    tmp_path: Path,
) -> AsyncIterator[tuple[Clients, svc_grpc.SiteManagementAsyncStub, svc_grpc.DeviceStatesAsyncStub]]:
    """The management services with the site model, device state and rules (cloud/api/grpc/site.py)."""
    from fieldgate.cloud.pipeline.rules import RuleBook
    from fieldgate.cloud.services.rules import RuleService
    from fieldgate.cloud.store.sqlite.state import SqliteStateStore

    async with api_stack(tmp_path) as stack:
        states = SqliteStateStore(tmp_path / "state")
        await states.start()
        server = grpc.aio.server()
        authority = TokenAuthority(SECRET, 3600)
        add_grpc_api(
            server,
            registry=stack.registry,
            event_store=stack.event_store,
            invocations=stack.invocations,
            commands=stack.commands,
            auth=ApiAuth(authority),
            site=stack.site,
            states=states,
            rules=RuleService(states, RuleBook(states), None),
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            interceptors = [cast(grpc.aio.ClientInterceptor, TenantTokenInterceptor(authority))]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as channel:
                clients = Clients(
                    stack,
                    svc_grpc.DeviceManagementStub(channel),
                    svc_grpc.EventQueriesStub(channel),
                    svc_grpc.CommandInvocationsStub(channel),
                )
                clients.states_store = states  # type: ignore[attr-defined]
                clients.rules = svc_grpc.RulesStub(channel)  # type: ignore[attr-defined]
                yield clients, svc_grpc.SiteManagementStub(channel), svc_grpc.DeviceStatesStub(channel)
        finally:
            await server.stop(grace=None)
            await states.stop()


def _rec(kind: str, **doc: object) -> svc.SiteRecordRequest:
    return svc.SiteRecordRequest(tenant="default", kind=kind, json=json.dumps(doc))


async def test_site_model_and_assignment_references(
    site_api: tuple[Clients, svc_grpc.SiteManagementAsyncStub, svc_grpc.DeviceStatesAsyncStub],
) -> None:
    c, site, _ = site_api
    await _setup(c)
    await site.CreateSiteRecord(_rec("area_type", token="building", name="Building"))
    area = await site.CreateSiteRecord(_rec("area", token="hall", area_type="building"))
    assert area.kind == "area" and json.loads(area.json)["created_ms"] > 0
    square = [[52.0, 13.0], [52.0, 13.1], [52.1, 13.1]]
    await site.CreateSiteRecord(_rec("zone", token="dock", area="hall", polygon=square))
    await site.CreateSiteRecord(_rec("asset_type", token="pump"))
    await site.CreateSiteRecord(_rec("asset", token="p-1", asset_type="pump"))
    got = await site.GetSiteRecord(svc.SiteRecordKey(tenant="default", kind="zone", token="dock"))
    assert json.loads(got.json)["polygon"] == square
    zones = await site.ListSiteRecords(
        svc.ListSiteRecordsRequest(tenant="default", kind="zone", referencing_kind="area", referencing="hall")
    )
    assert [r.token for r in zones.records] == ["dock"] and zones.total == 1
    renamed = await site.UpdateSiteRecord(_rec("area", token="hall", area_type="building", name="Hall"))
    assert json.loads(renamed.json)["name"] == "Hall"

    # refusals: unknown kind, a bad document naming the field, unknown reference, taken token
    codes = [
        await _code(site.CreateSiteRecord(_rec("planet", token="x"))),
        await _code(site.CreateSiteRecord(_rec("zone", token="z", area="hall", polygon=[[1, 1]]))),
        await _code(site.CreateSiteRecord(_rec("asset", token="p-2", asset_type="nope"))),
        await _code(site.CreateSiteRecord(_rec("asset", token="p-1", asset_type="pump"))),
        await _code(site.GetSiteRecord(svc.SiteRecordKey(tenant="default", kind="area", token="nope"))),
    ]
    assert codes == [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,  # an unknown reference (the asset type)
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
    ]

    # device groups: elements, nesting, resolved devices; a device element must exist
    await site.CreateSiteRecord(_rec("device_group", token="outer"))
    await site.CreateSiteRecord(_rec("device_group", token="inner"))
    el = svc.GroupElementRequest(
        tenant="default", group="inner", element_kind="device", token="d-1", roles=["r"]
    )
    assert list((await site.PutGroupElement(el)).roles) == ["r"]
    nest = svc.GroupElementRequest(tenant="default", group="outer", element_kind="group", token="inner")
    await site.PutGroupElement(nest)
    cycle = svc.GroupElementRequest(tenant="default", group="inner", element_kind="group", token="outer")
    assert await _code(site.PutGroupElement(cycle)) == grpc.StatusCode.FAILED_PRECONDITION
    ghost = svc.GroupElementRequest(tenant="default", group="outer", element_kind="device", token="ghost")
    assert await _code(site.PutGroupElement(ghost)) == grpc.StatusCode.INVALID_ARGUMENT
    devices = await site.ListGroupDevices(svc.ListGroupDevicesRequest(tenant="default", group="outer"))
    assert list(devices.devices) == ["d-1"]
    direct = svc.ListGroupDevicesRequest(tenant="default", group="outer", direct_only=True)
    assert list((await site.ListGroupDevices(direct)).devices) == []
    els = await site.ListGroupElements(svc.ListGroupElementsRequest(tenant="default", group="outer"))
    assert [(e.element_kind, e.token) for e in els.elements] == [("group", "inner")]

    # assignments: an unknown area/asset is INVALID_ARGUMENT; a held one cannot be deleted
    bad = model.Assignment(tenant="default", device="d-1", area="nope")
    assert await _code(c.devices.CreateAssignment(svc.CreateAssignmentRequest(assignment=bad))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    a = await c.devices.CreateAssignment(
        svc.CreateAssignmentRequest(assignment=model.Assignment(tenant="default", device="d-1", area="hall"))
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await site.DeleteSiteRecord(svc.SiteRecordKey(tenant="default", kind="area", token="hall"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "zone 'dock'" in str(
        info.value.details()
    )
    await site.DeleteSiteRecord(svc.SiteRecordKey(tenant="default", kind="zone", token="dock"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await site.DeleteSiteRecord(svc.SiteRecordKey(tenant="default", kind="area", token="hall"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and a.token in str(info.value.details())
    await c.devices.ReleaseAssignment(svc.ReleaseAssignmentRequest(tenant="default", token=a.token))
    deleted = await site.DeleteSiteRecord(svc.SiteRecordKey(tenant="default", kind="area", token="hall"))
    assert deleted.token == "hall"
    beta = await site.ListSiteRecords(svc.ListSiteRecordsRequest(tenant="beta", kind="asset"))
    assert beta.total == 0


async def test_device_states(
    site_api: tuple[Clients, svc_grpc.SiteManagementAsyncStub, svc_grpc.DeviceStatesAsyncStub],
) -> None:
    from fieldgate.cloud.store.state import DeviceState, MeasurementValue

    c, _, states = site_api
    await _setup(c)
    await c.devices.CreateDevice(
        svc.CreateDeviceRequest(device=model.Device(token="d-2", tenant="default", device_type="thermostat"))
    )
    store = c.states_store  # type: ignore[attr-defined]
    await store.apply(
        "default",
        [
            DeviceState(
                device="d-1",
                device_type="thermostat",
                last_received_ms=T0,
                measurements={"t": MeasurementValue(time_ms=T0, value=21.5)},
            ),
            DeviceState(device="d-2", device_type="thermostat", presence="missing", presence_ms=T0),
        ],
    )
    one = await states.GetDeviceState(svc.GetDeviceStateRequest(tenant="default", device="d-1"))
    assert one.presence == "present" and json.loads(one.state_json)["measurements"]["t"]["value"] == 21.5
    missing = await states.ListDeviceStates(svc.ListDeviceStatesRequest(tenant="default", presence="missing"))
    assert [s.device for s in missing.states] == ["d-2"] and missing.total == 1
    every = await states.ListDeviceStates(svc.ListDeviceStatesRequest(tenant="default"))
    assert every.total == 2
    await c.devices.CreateDevice(
        svc.CreateDeviceRequest(device=model.Device(token="d-3", tenant="default", device_type="thermostat"))
    )
    codes = [
        await _code(states.GetDeviceState(svc.GetDeviceStateRequest(tenant="default", device="d-3"))),
        await _code(states.GetDeviceState(svc.GetDeviceStateRequest(tenant="default", device="ghost"))),
        await _code(states.ListDeviceStates(svc.ListDeviceStatesRequest(tenant="default", presence="gone"))),
    ]
    assert codes == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT]


async def test_rules(
    site_api: tuple[Clients, svc_grpc.SiteManagementAsyncStub, svc_grpc.DeviceStatesAsyncStub],
) -> None:
    c = site_api[0]
    rules: svc_grpc.RulesAsyncStub = c.rules  # type: ignore[attr-defined]
    hot = {"id": "hot", "kind": "threshold", "measurement": "t", "operator": ">", "value": 30}
    made = await rules.CreateRule(svc.RuleRequest(tenant="default", json=json.dumps(hot)))
    assert made.id == "hot" and json.loads(made.json)["value"] == 30
    dup = svc.RuleRequest(tenant="default", json=json.dumps(hot))
    bad = svc.RuleRequest(tenant="default", json=json.dumps({**hot, "id": "h2", "operator": "~"}))
    assert await _code(rules.CreateRule(dup)) == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rules.CreateRule(bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "operator" in str(info.value.details())
    changed = await rules.ReplaceRule(
        svc.RuleRequest(tenant="default", json=json.dumps({**hot, "value": 35}))
    )
    assert json.loads(changed.json)["value"] == 35
    got = await rules.GetRule(svc.RuleKey(tenant="default", id="hot"))
    assert json.loads(got.json)["value"] == 35
    assert [r.id for r in (await rules.ListRules(svc.ListRulesRequest(tenant="default"))).rules] == ["hot"]
    assert (await rules.DeleteRule(svc.RuleKey(tenant="default", id="hot"))).token == "hot"
    assert await _code(rules.GetRule(svc.RuleKey(tenant="default", id="hot"))) == grpc.StatusCode.NOT_FOUND
    assert (await rules.ListRules(svc.ListRulesRequest(tenant="beta"))).rules == []
