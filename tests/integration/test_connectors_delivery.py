"""The connectors stage against real receivers: an HTTP server on 127.0.0.1 that fails (500s,
then timeouts) and recovers, and a real Mosquitto; events on the real embedded bus.

What a user would notice: every event arrives, none is missing, a repeat only ever carries an
idempotency key the receiver already saw, the signature verifies with the connector's secret,
a connector that is down does not hold up another, failed events are dead-lettered and can be
re-driven, and the bus offsets are committed only once every connector is done."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from tests.helpers.connectors import (
    SECRET,
    TENANT,
    MqttSubscriber,
    make_event,
    publish,
    stage_rig,
    webhook,
)
from tests.helpers.mosquitto import Mosquitto, mosquitto  # noqa: F401  (fixture)
from tests.helpers.waiting import eventually, never
from tests.helpers.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.integration


async def test_webhook_outage_recovers_while_mqtt_keeps_delivering(
    tmp_path: Path,
    mosquitto: Mosquitto,  # noqa: F811
) -> None:
    events = [make_event(i, device=f"dev-{i % 3}") for i in range(30)]
    ids = {ev.id for ev in events}
    async with webhook_receiver(secret=SECRET) as rx:
        rx.mode = "500"
        mqtt_spec = ConnectorSpec.model_validate(
            {
                "id": "broker",
                "kind": "mqtt",
                "mqtt": {
                    "host": mosquitto.host,
                    "port": mosquitto.port,
                    "topic": "out/{tenant}/{device}/{type}",
                },
                "delivery": {"initial_backoff_s": 0.05, "max_backoff_s": 0.2, "timeout_s": 2},
            }
        )
        sub = MqttSubscriber(mosquitto.host, mosquitto.port, "out/#")
        try:
            async with stage_rig(tmp_path, [webhook("hook", rx.url), mqtt_spec]) as rig:
                await publish(rig.bus, events[:15])
                # The broker gets everything while the webhook answers 500.
                await eventually(lambda: len(set(sub.ids())) >= 15, what="mqtt delivery", timeout=20)
                assert rx.accepted == [] and rx.failed > 0
                # Then the receiver hangs past the connector's timeout: still nothing accepted.
                rx.mode, rx.hang_s = "hang", 2.0
                await publish(rig.bus, events[15:])
                await eventually(lambda: len(set(sub.ids())) == 30, what="mqtt delivery", timeout=20)
                assert rx.accepted == []
                # Not committed: the webhook has not delivered (nor dead-lettered) the events.
                assert (rig.committed() or 0) < rig.end()
                rx.mode = "ok"
                await eventually(lambda: set(rx.event_ids()) == ids, what="webhook delivery", timeout=30)
                await eventually(lambda: rig.committed() == rig.end(), what="commit", timeout=10)
                hook = rig.stage.runner(TENANT, "hook")
                assert hook is not None and hook.stats.attempts_failed > 0 and hook.stats.dead_lettered == 0
        finally:
            sub.close()
        assert rx.bad_signatures == 0
        # Every accepted request's key is an event id; repeats only of keys already seen.
        assert set(rx.keys) == ids
        assert len(rx.event_ids()) == 30 + rx.duplicates
        assert max(rx.attempts_seen) > 1  # they were retries, numbered
        topics = {t for t, _doc in sub.received}
        assert "out/default/dev-0/measurement" in topics
        assert set(sub.ids()) == ids


async def test_dead_letter_after_max_attempts_then_redrive(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(5)]
    async with webhook_receiver(secret=SECRET) as rx:
        rx.mode = "500"
        async with stage_rig(tmp_path, [webhook("hook", rx.url, max_attempts=3)]) as rig:
            await publish(rig.bus, events)
            letters = await eventually(lambda: _letters(rig, 5), what="5 dead letters", timeout=20)
            assert {d.event_id for d in letters} == {ev.id for ev in events}
            assert all(d.attempts == 3 and "HTTP 500" in d.reason for d in letters)
            # Dead letters are durable: the records are committed, nothing is lost.
            await eventually(lambda: rig.committed() == rig.end(), what="commit")
            assert rx.accepted == []

            rx.mode = "ok"
            assert await rig.store.request_redrive(TENANT, "hook") == 5
            await eventually(lambda: len(set(rx.event_ids())) == 5, what="re-drive", timeout=20)
            await eventually(lambda: _count(rig), what="dead letters removed", timeout=10)
            runner = rig.stage.runner(TENANT, "hook")
            assert runner is not None and runner.stats.redriven == 5


async def test_permanent_failure_dead_letters_at_once(tmp_path: Path) -> None:
    async with webhook_receiver(secret=SECRET) as rx:
        rx.mode = "400"
        async with stage_rig(tmp_path, [webhook("hook", rx.url, max_attempts=50)]) as rig:
            await publish(rig.bus, [make_event(1)])
            letters = await eventually(lambda: _letters(rig, 1), what="dead letter")
            assert letters[0].attempts == 1 and "HTTP 400" in letters[0].reason


async def test_full_queue_dead_letters_with_that_policy_and_blocks_with_block(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(20)]
    async with webhook_receiver(secret=SECRET) as rx:
        rx.mode = "500"
        specs = [
            webhook("spill", rx.url, queue_size=2, overflow="dead_letter", max_attempts=100),
        ]
        async with stage_rig(tmp_path, specs) as rig:
            await publish(rig.bus, events)
            spill = rig.stage.runner(TENANT, "spill")
            assert spill is not None
            await eventually(lambda: spill.stats.overflow_dead_lettered >= 17, what="overflow")
            assert spill.queued <= 2
            letters = await rig.store.list_dead_letters(TENANT, "spill", 100)
            assert all(d.reason.startswith("queue full") and d.attempts == 0 for d in letters)
            rx.mode = "ok"
            await rig.store.request_redrive(TENANT, "spill")
            await eventually(lambda: set(rx.event_ids()) == {e.id for e in events}, what="all", timeout=20)

    async with webhook_receiver(secret=SECRET) as rx:
        rx.mode = "500"
        specs = [webhook("wait", rx.url, queue_size=2, overflow="block", max_attempts=100)]
        async with stage_rig(tmp_path / "b", specs) as rig:
            await publish(rig.bus, events)
            wait = rig.stage.runner(TENANT, "wait")
            assert wait is not None
            await eventually(lambda: wait.stats.blocked > 0, what="blocked")
            # The stage stopped reading: nothing beyond the queue and the one it waits to offer.
            await never(
                lambda: wait.queued > 2 or wait.stats.dead_lettered or rig.stage.stats.offered > 3,
                within=0.5,
                what="the blocked connector reading on or dead-lettering",
            )
            rx.mode = "ok"
            await eventually(lambda: set(rx.event_ids()) == {e.id for e in events}, what="all", timeout=20)
            assert await rig.store.count_dead_letters(TENANT, "wait") == 0


async def test_filters_choose_the_events(tmp_path: Path) -> None:
    from fieldgate.v1 import model_pb2 as model

    async with webhook_receiver(secret=SECRET) as rx:
        base = {"kind": "webhook", "webhook": {"url": rx.url, "secret": SECRET}}
        specs = [
            ConnectorSpec.model_validate({**base, "id": "alerts", "filter": {"event_types": ["alert"]}}),
            ConnectorSpec.model_validate({**base, "id": "pumps", "filter": {"devices": ["pump-*"]}}),
            ConnectorSpec.model_validate({**base, "id": "typed", "filter": {"device_types": ["valve"]}}),
            ConnectorSpec.model_validate(
                {**base, "id": "north", "filter": {"areas": ["north"], "customers": ["acme"]}}
            ),
            ConnectorSpec.model_validate({**base, "id": "off", "enabled": False}),
        ]
        async with stage_rig(tmp_path, specs) as rig:
            reg = rig.registry
            await reg.create_device_type(TENANT, model.DeviceType(token="valve", name="valve"))
            await reg.create_device_type(TENANT, model.DeviceType(token="other", name="other"))
            await reg.create_device(model.Device(token="valve-1", tenant=TENANT, device_type="valve"))
            await reg.create_device(model.Device(token="pump-1", tenant=TENANT, device_type="other"))
            a = await reg.create_assignment(
                model.Assignment(tenant=TENANT, device="pump-1", area="north", customer="acme")
            )
            alert = make_event(1, device="dev-9", kind="alert")
            pump = make_event(2, device="pump-1")
            pump.assignment = a.token
            valve = make_event(3, device="valve-1", kind="location")
            other = make_event(4, device="dev-9")
            await publish(rig.bus, [alert, pump, valve, other])
            expected = {alert.id: {"alerts"}, pump.id: {"pumps", "north"}, valve.id: {"typed"}}
            await eventually(lambda: len(rx.accepted) >= 4, what="deliveries")
            await eventually(lambda: rig.committed() == rig.end(), what="commit")
            await never(lambda: len(rx.accepted) > 4, within=0.3, what="a delivery the filters exclude")
        got: dict[str, set[str]] = {}
        for body, conn in zip(rx.accepted, rx.connectors, strict=True):
            got.setdefault(body["id"], set()).add(conn)
        assert got == expected
        assert other.id not in got


async def test_filters_by_device_group_and_area(tmp_path: Path) -> None:
    """``groups``: the device is in the group or in a group nested in it; ``areas``: the
    assignment's area or an area above it. A device in no group, or assigned elsewhere, or an
    unknown group: nothing."""
    from fieldgate.cloud.store.site import Area, AreaType, DeviceGroup, GroupElement
    from fieldgate.cloud.store.sqlite.site import SqliteSiteStore
    from fieldgate.v1 import model_pb2 as model

    site = SqliteSiteStore(tmp_path / "site")
    await site.start()
    try:
        await site.create(TENANT, AreaType(token="b"))
        await site.create(TENANT, Area(token="plant", area_type="b"))
        await site.create(TENANT, Area(token="hall-1", area_type="b", parent="plant"))
        await site.create(TENANT, Area(token="yard", area_type="b"))
        await site.create(TENANT, DeviceGroup(token="fleet"))
        await site.create(TENANT, DeviceGroup(token="north-fleet"))
        await site.put_element(TENANT, "fleet", GroupElement(kind="group", token="north-fleet"))
        await site.put_element(TENANT, "fleet", GroupElement(kind="device", token="d-1"))
        await site.put_element(TENANT, "north-fleet", GroupElement(kind="device", token="d-2"))
        async with webhook_receiver(secret=SECRET) as rx:
            base = {"kind": "webhook", "webhook": {"url": rx.url, "secret": SECRET}}
            specs = [
                ConnectorSpec.model_validate({**base, "id": "fleet", "filter": {"groups": ["fleet"]}}),
                ConnectorSpec.model_validate({**base, "id": "north", "filter": {"groups": ["north-fleet"]}}),
                ConnectorSpec.model_validate({**base, "id": "ghost", "filter": {"groups": ["no-such"]}}),
                ConnectorSpec.model_validate({**base, "id": "plant", "filter": {"areas": ["plant"]}}),
                ConnectorSpec.model_validate(
                    {**base, "id": "hall", "filter": {"areas": ["hall-1"], "groups": ["fleet"]}}
                ),
            ]
            async with stage_rig(tmp_path, specs, site=site) as rig:
                reg = rig.registry
                await reg.create_device_type(TENANT, model.DeviceType(token="t", name="t"))
                assigned = {}
                for device, area in (("d-1", "hall-1"), ("d-2", "yard"), ("d-3", "plant")):
                    await reg.create_device(model.Device(token=device, tenant=TENANT, device_type="t"))
                    assigned[device] = await reg.create_assignment(
                        model.Assignment(tenant=TENANT, device=device, area=area)
                    )
                evs = []
                for i, device in enumerate(("d-1", "d-2", "d-3", "d-4"), start=1):
                    ev = make_event(i, device=device)
                    if device in assigned:
                        ev.assignment = assigned[device].token
                    evs.append(ev)
                await publish(rig.bus, evs)
                d1, d2, d3, d4 = evs
                expected = {
                    d1.id: {"fleet", "plant", "hall"},  # in fleet directly; hall-1 is in the plant
                    d2.id: {"fleet", "north"},  # in north-fleet, nested in fleet; the yard is no plant
                    d3.id: {"plant"},  # in no group
                }
                await eventually(lambda: len(rx.accepted) >= 6, what="deliveries")
                await eventually(lambda: rig.committed() == rig.end(), what="commit")
                await never(lambda: len(rx.accepted) > 6, within=0.3, what="a delivery the filters exclude")
        got: dict[str, set[str]] = {}
        for body, conn in zip(rx.accepted, rx.connectors, strict=True):
            got.setdefault(body["id"], set()).add(conn)
        assert got == expected
        assert d4.id not in got
    finally:
        await site.stop()


async def _letters(rig, n: int):
    letters = await rig.store.list_dead_letters(TENANT, "hook", 100)
    return letters if len(letters) == n else None


async def _count(rig) -> bool:
    return bool(await rig.store.count_dead_letters(TENANT, "hook") == 0)
