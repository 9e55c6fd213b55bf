"""The cloud pipeline end to end on one machine: an edge stream (a real gRPC client on a real
server on 127.0.0.1) → ingest → [decoded] → inbound → [enriched] → persistence → event store,
with registration for unknown devices, on the real embedded bus and SQLite stores."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from fieldgate.cloud.bus import DECODED, FAILED_DECODE, Message, topic_name
from fieldgate.cloud.config import TenantConfig
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc
from tests.helpers.cloud_pipeline import CloudPipeline, EdgeClient, edge, measurement
from tests.helpers.waiting import collect, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[CloudPipeline]:
    async with CloudPipeline(tmp_path / "cloud") as c:
        yield c


async def register(cloud: CloudPipeline, device: str, tenant: str = "default") -> None:
    await cloud.registry.create_device(model.Device(token=device, tenant=tenant, device_type="default"))


def expected_id(tenant: str, device: str, alt: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{device}/{alt}").hex


async def test_batch_is_acked_and_stored_with_ids_and_assignment(cloud: CloudPipeline) -> None:
    await register(cloud, "thermo-1")
    await cloud.registry.create_assignment(
        model.Assignment(
            token="asg-1",
            tenant="default",
            device="thermo-1",
            asset="boiler",
            status=model.ASSIGNMENT_STATUS_ACTIVE,
        )
    )
    async with edge(cloud.port) as e:
        ack = await e.send_and_ack([measurement("thermo-1", f"m-{i}", t=float(i)) for i in range(3)])
        assert ack.rejected == 0

    async def stored() -> list[pb.Event]:
        evs = await cloud.device_events("thermo-1")
        return evs if len(evs) == 3 else []

    events = await eventually(stored, what="three stored events")
    assert {ev.alternate_id for ev in events} == {"m-0", "m-1", "m-2"}
    for ev in events:
        assert ev.id == expected_id("default", "thermo-1", ev.alternate_id)
        assert ev.assignment == "asg-1"
        assert ev.received_time_ms > 0


@pytest.mark.parametrize("recent_ids", [200_000, 1], ids=["inbound-lru", "store-authority"])
async def test_duplicate_batch_is_stored_once(tmp_path: Path, recent_ids: int) -> None:
    """A batch the edge re-sends (same alternate ids, e.g. after a lost ack) is stored once,
    whether inbound's recent-id LRU catches it or only the event store does."""
    async with CloudPipeline(tmp_path / "cloud", recent_ids=recent_ids) as cloud:
        await register(cloud, "dup-1")
        batch = [measurement("dup-1", f"d-{i}") for i in range(5)]
        async with edge(cloud.port) as e:
            await e.send_and_ack(batch)
            await eventually(lambda: _count(cloud, "dup-1", 5), what="first copy stored")
            await e.send_and_ack(batch)
        async with edge(cloud.port) as e2:  # and again on a new stream (an edge reconnect)
            await e2.send_and_ack(batch)

        async def all_seen() -> bool:
            dropped = cloud.inbound.stats.duplicates + cloud.persistence.stats.duplicates
            return dropped >= 10

        await eventually(all_seen, what="both re-sends processed")
        assert len(await cloud.device_events("dup-1")) == 5
        assert cloud.persistence.stats.stored == 5


async def _count(cloud: CloudPipeline, device: str, n: int, tenant: str = "default") -> bool:
    return len(await cloud.device_events(device, tenant)) >= n


async def test_unknown_device_is_registered_and_its_events_stored(cloud: CloudPipeline) -> None:
    async with edge(cloud.port) as e:
        await e.send_and_ack([measurement("newcomer", "n-1"), measurement("newcomer", "n-2")])

    async def stored() -> list[pb.Event]:
        evs = await cloud.device_events("newcomer")
        return evs if len(evs) == 3 else []

    events = await eventually(stored, what="events of the auto-registered device")
    device = await cloud.registry.get_device("default", "newcomer")
    assert device is not None and device.device_type == "default"
    changes = [ev for ev in events if ev.WhichOneof("payload") == "state_change"]
    assert len(changes) == 1
    assert changes[0].state_change.kind == pb.STATE_CHANGE_KIND_REGISTRATION
    assert changes[0].state_change.current == "default"
    assert {ev.alternate_id for ev in events} == {"n-1", "n-2", "registration:newcomer"}
    # The default device type exists with the documented commands.
    dtype = await cloud.registry.get_device_type("default", "default")
    assert dtype is not None
    commands = {c.name: c for c in dtype.commands}
    assert set(commands) == {"ping", "set-interval"}
    assert [(p.name, p.type, p.required) for p in commands["set-interval"].params] == [
        ("seconds", model.PARAM_TYPE_INT, True)
    ]


async def test_sitewhere_register_device_uses_the_requested_type(cloud: CloudPipeline) -> None:
    await cloud.registry.create_device_type("default", model.DeviceType(token="sensor-x", name="Sensor X"))
    request = pb.Event(
        tenant="default",
        device="sw-7",
        alternate_id="reg-req-1",
        event_time_ms=1,
        state_change=pb.StateChange(kind=pb.STATE_CHANGE_KIND_REGISTRATION, current="sensor-x"),
    )
    async with edge(cloud.port) as e:
        await e.send_and_ack([request, measurement("sw-7", "sw-m-1")])
    await eventually(lambda: _count(cloud, "sw-7", 2), what="events of sw-7")
    device = await cloud.registry.get_device("default", "sw-7")
    assert device is not None and device.device_type == "sensor-x"
    # The device's own registration request is the registration record: no second one.
    changes = await cloud.device_events("sw-7", kind="state_change")
    assert [ev.alternate_id for ev in changes] == ["reg-req-1"]


async def test_auto_register_off_keeps_events_unregistered(cloud: CloudPipeline) -> None:
    async with edge(cloud.port) as e:
        ack = await e.send_and_ack([measurement("stranger", f"s-{i}", tenant="strict") for i in range(4)])
        assert ack.rejected == 0  # accepted by the cloud; the tenant's policy decides later

    async def kept() -> bool:
        return cloud.registration.stats.events_kept_unregistered >= 4

    await eventually(kept, what="events counted as kept unregistered")
    assert await cloud.registry.get_device("strict", "stranger") is None
    assert await cloud.device_events("stranger", tenant="strict") == []
    assert cloud.registration.stats.devices_registered == 0


async def test_unknown_tenant_is_rejected_in_the_ack(cloud: CloudPipeline) -> None:
    await register(cloud, "mixed-ok")
    async with edge(cloud.port) as e:
        ack = await e.send_and_ack(
            [
                measurement("mixed-ok", "ok-1"),
                measurement("ghost-dev", "g-1", tenant="nosuchtenant"),
                measurement("ghost-dev", "g-2", tenant="nosuchtenant"),
                pb.Event(tenant="default", device="mixed-ok", measurement=pb.Measurement()),  # no alt id
            ]
        )
    assert ack.rejected == 3
    assert "nosuchtenant" in ack.reason and "alternate id" in ack.reason
    assert cloud.ingest.stats.rejected_unknown_tenant == 2
    await eventually(lambda: _count(cloud, "mixed-ok", 1), what="the good event stored")


async def test_stream_without_hello_is_refused(cloud: CloudPipeline) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{cloud.port}") as channel:
        call = svc_grpc.EdgeUplinkStub(channel).Connect()  # type: ignore[call-arg]
        await call.write(svc.EdgeMessage(batch=svc.EventBatchUp(seq=1, events=[measurement("x", "x-1")])))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Hello" in (info.value.details() or "")
    assert cloud.ingest.stats.protocol_errors == 1
    # Nothing was accepted, and the server still serves well-behaved edges.
    async with edge(cloud.port) as e:
        assert (await e.send_and_ack([measurement("x", "x-2")])).rejected == 0


async def test_poison_record_is_dead_lettered_and_the_stage_continues(cloud: CloudPipeline) -> None:
    await register(cloud, "after-poison")
    await cloud.bus.publish(
        topic_name("default", DECODED), [Message(key=b"p", value=b"\xff\xff this is not an EventBatch")]
    )
    async with edge(cloud.port) as e:
        await e.send_and_ack([measurement("after-poison", "ap-1")])
    await eventually(lambda: _count(cloud, "after-poison", 1), what="good event after the poison record")
    assert cloud.inbound.stage.stats.dead_lettered == 1

    dead = await _read_failed(cloud, "default")
    assert len(dead) == 1
    assert dead[0].payload.startswith(b"\xff\xff this is not")
    assert "EventBatch" in dead[0].reason and "inbound" in dead[0].source


async def _read_failed(cloud: CloudPipeline, tenant: str) -> list[pb.FailedDecode]:
    """The tenant's failed decodes: at least one, and whatever else is there by then."""
    async with cloud.bus.consumer("test-inspector", FAILED_DECODE) as consumer:

        async def fetch() -> list[pb.FailedDecode]:
            records = await consumer.poll(100, 0.2)
            return [pb.FailedDecode.FromString(r.value) for r in records if tenant in r.topic]

        out = await collect(fetch, 1, what="failed decodes")
        return out + await fetch()


async def test_tenant_created_later_is_accepted(tmp_path: Path) -> None:
    async with CloudPipeline(tmp_path / "cloud") as cloud:
        async with edge(cloud.port) as e:
            first = await e.send_and_ack([measurement("late-1", "l-1", tenant="latecomer")])
            assert first.rejected == 1
            await cloud.registry.ensure_tenant(
                model.Tenant(token="latecomer", auto_register=True, default_device_type="default")
            )

            async def accepted() -> bool:
                ack = await e.send_and_ack(
                    [measurement("late-1", f"l-{uuid.uuid4().hex}", tenant="latecomer")]
                )
                return ack.rejected == 0

            await eventually(accepted, what="events of the new tenant accepted")
        await eventually(
            lambda: _count(cloud, "late-1", 2, tenant="latecomer"), what="events of the new tenant"
        )


async def test_unknown_tenant_config_falls_back_to_registry(tmp_path: Path) -> None:
    """A tenant known only to the registry (created through the API) follows its record."""
    tenants = (TenantConfig(token="default"),)
    async with CloudPipeline(tmp_path / "cloud", tenants=tenants) as cloud:
        await cloud.registry.ensure_tenant(model.Tenant(token="apionly", auto_register=False))
        async with edge(cloud.port) as e:
            await e.send_and_ack([measurement("d", "a-1", tenant="apionly")])
        await eventually(lambda: cloud.registration.stats.events_kept_unregistered == 1, what="kept")
        assert await cloud.registry.get_device("apionly", "d") is None


async def test_edge_client_helper_sees_welcome(cloud: CloudPipeline) -> None:
    client = EdgeClient(cloud.port, "edge-w")
    welcome = await client.connect()
    assert welcome.session_id
    assert cloud.sessions.connected_edges == ["edge-w"]
    await client.close()
    await eventually(lambda: cloud.sessions.connected_edges == [], what="session closed")


async def test_reconnect_supersedes_the_old_stream(cloud: CloudPipeline) -> None:
    """An edge that reconnects while its old stream still looks open (half-dead TCP) gets its
    commands on the new stream; the old stream is ended by the cloud."""
    await register(cloud, "dual-1")
    old = EdgeClient(cloud.port, "edge-same")
    await old.connect()
    await old.send_and_ack([measurement("dual-1", "du-1")])
    new = EdgeClient(cloud.port, "edge-same")
    await new.connect()
    await eventually(lambda: old.stream_ended, what="old stream ended")
    inv = await cloud.commands.invoke("default", "dual-1", "ping", {}, 60, "test")
    down = await new.next_command()
    assert down.invocation.invocation == inv.id
    assert old.commands.empty()
    assert cloud.sessions.stats.sessions_superseded == 1
    await old.close()
    await new.close()


async def test_stop_ends_streams_cleanly(tmp_path: Path) -> None:
    cloud = CloudPipeline(tmp_path / "cloud")
    await cloud.start()
    try:
        client = EdgeClient(cloud.port, "edge-bye")
        await client.connect()
        await client.send_and_ack([measurement("bye-1", "b-1")])
    finally:
        await cloud.stop()
    await eventually(lambda: client.stream_ended, what="stream ended")
    assert await client.code() == grpc.StatusCode.OK
    await client.close()
