"""The Kafka bus against a real single-node Kafka (KRaft), and the real pipeline on it.

Every test uses its own topic prefix, so the session's one broker keeps tests apart (a
consumer subscribes to ``^<prefix>\\.tenant\\..+\\.<stage>$`` and never sees another test's
topics). Waits are generous "arrives within N seconds" loops, bounded in time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from fieldgate.cloud.bus import DECODED, ENRICHED, PERSISTED, Message, Record, topic_name
from fieldgate.cloud.bus.kafka import KafkaBus
from fieldgate.cloud.pipeline.inbound import InboundProcessing
from fieldgate.cloud.pipeline.persistence import EventPersistence
from fieldgate.cloud.pipeline.registration import Registration
from fieldgate.cloud.pipeline.stage import StageSettings
from fieldgate.cloud.store.events import EventQuery
from fieldgate.cloud.store.sqlite.events import SqliteEventStore
from fieldgate.cloud.store.sqlite.invocations import SqliteInvocationStore
from fieldgate.cloud.store.sqlite.registry import SqliteRegistry
from fieldgate.devservers import KafkaServer
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.cloud_pipeline import DEFAULT_TENANTS, measurement
from tests.helpers.waiting import collect, eventually, never

pytestmark = pytest.mark.distributed

WAIT_S = 60.0


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def bus(kafka: KafkaServer) -> AsyncIterator[KafkaBus]:
    async with KafkaBus(
        kafka.bootstrap, prefix=_prefix(), partitions=3, metadata_refresh_ms=1000, session_timeout_ms=6000
    ) as b:
        yield b


def _msgs(device: str, start: int, count: int) -> list[Message]:
    return [Message(key=device.encode(), value=f"{device}:{i}".encode()) for i in range(start, start + count)]


def _seq(record: Record) -> int:
    return int(record.value.decode().rsplit(":", 1)[1])


async def _fully_committed(bus: KafkaBus, group: str, topic: str) -> bool:
    """The group committed every record of ``topic`` (partitions never written count as done)."""
    ends = {p: end for p, end in (await bus.end_offsets(topic)).items() if end > 0}
    return await bus.committed(group, topic) == ends


def _in_key_order(records: Sequence[Record]) -> bool:
    last: dict[bytes, int] = {}
    for r in records:
        if _seq(r) <= last.get(r.key, -1):
            return False
        last[r.key] = _seq(r)
    return True


async def test_publish_poll_commit(bus: KafkaBus) -> None:
    topic = topic_name("acme", DECODED, bus.prefix)
    devices = [f"dev-{i}" for i in range(6)]
    for d in devices:
        await bus.publish(topic, _msgs(d, 0, 20))
    assert sum((await bus.end_offsets(topic)).values()) == 120
    async with bus.consumer("g1", DECODED) as c:
        got = await collect(lambda: c.poll(500, 0.5), 120, WAIT_S)
        assert len(got) == 120
        assert {r.value for r in got} == {m.value for d in devices for m in _msgs(d, 0, 20)}
        assert all(r.topic == topic and r.timestamp_ms > 0 for r in got)
        assert _in_key_order(got)
        # A device's records all sit in one partition (keyed by device).
        parts: dict[bytes, set[int]] = {}
        for r in got:
            parts.setdefault(r.key, set()).add(r.partition)
        assert all(len(p) == 1 for p in parts.values())
        await c.commit(got)
    assert await _fully_committed(bus, "g1", topic)
    assert bus.stats.published_records == 120


async def test_restart_resumes_after_committed_offset(bus: KafkaBus) -> None:
    topic = topic_name("acme", DECODED, bus.prefix)
    await bus.publish(topic, _msgs("d1", 0, 20))
    async with bus.consumer("g", DECODED) as c:
        got = await collect(lambda: c.poll(500, 0.5), 20, WAIT_S)
        assert [_seq(r) for r in got] == list(range(20))
        await c.commit(got[:12])  # the stage processed only the first 12
    await bus.publish(topic, _msgs("d1", 20, 5))
    async with bus.consumer("g", DECODED) as c:
        again = await collect(lambda: c.poll(500, 0.5), 13, WAIT_S)
        assert [_seq(r) for r in again] == list(range(12, 25))
        await c.commit(again)
    async with bus.consumer("g", DECODED) as c:
        assert await c.poll(500, 3.0) == []
    # Another group is independent: it starts at the beginning.
    async with bus.consumer("other", DECODED) as c:
        assert len(await collect(lambda: c.poll(500, 0.5), 25, WAIT_S)) == 25


async def test_pattern_subscription_sees_a_new_tenant(bus: KafkaBus) -> None:
    await bus.publish(topic_name("first", DECODED, bus.prefix), _msgs("d", 0, 1))
    async with bus.consumer("g", DECODED) as c:
        assert len(await collect(lambda: c.poll(500, 0.5), 1, WAIT_S)) == 1
        newcomer = topic_name("newcomer", DECODED, bus.prefix)
        await bus.publish(newcomer, _msgs("d", 0, 3))
        # ... and a topic of another stage is not this consumer's business.
        await bus.publish(topic_name("newcomer", ENRICHED, bus.prefix), _msgs("x", 0, 3))
        got = await collect(lambda: c.poll(500, 0.5), 3, WAIT_S)
        assert [(r.topic, _seq(r)) for r in got] == [(newcomer, 0), (newcomer, 1), (newcomer, 2)]
        assert await c.poll(500, 2.0) == []


async def test_two_consumers_share_partitions(bus: KafkaBus) -> None:
    tenants = ("a", "b")
    for t in tenants:  # create the topics first so both members get a share from the start
        await bus.ensure_topic(topic_name(t, DECODED, bus.prefix))
    received: dict[int, list[Record]] = {0: [], 1: []}
    expected = 12 * 25 * len(tenants)
    stop = asyncio.Event()

    async with bus.consumer("shared", DECODED) as c0, bus.consumer("shared", DECODED) as c1:
        members = (c0, c1)

        async def run(i: int) -> None:
            c = members[i]
            while not stop.is_set():
                records = await c.poll(200, 0.3)
                if records:
                    received[i].extend(records)
                    await c.commit(records)

        tasks = [asyncio.create_task(run(i)) for i in (0, 1)]
        try:
            # Both members joined and own partitions (6 partitions: 3 each with roundrobin).
            await eventually(
                lambda: c0.assignment and c1.assignment and len(c0.assignment | c1.assignment) == 6,
                WAIT_S,
                "the group settles (6 partitions over both members)",
            )
            assert not (c0.assignment & c1.assignment)
            for t in tenants:
                topic = topic_name(t, DECODED, bus.prefix)
                for d in range(12):
                    await bus.publish(topic, _msgs(f"{t}-dev{d}", 0, 25))
            await eventually(
                lambda: len({r.value for rs in received.values() for r in rs}) >= expected,
                WAIT_S,
                f"all {expected} records read",
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    assert received[0] and received[1], "one member got nothing"
    for rs in received.values():
        assert _in_key_order(rs)
    # No device was read by both members (partitions are not shared).
    keys0 = {r.key for r in received[0]}
    keys1 = {r.key for r in received[1]}
    assert not keys0 & keys1
    for t in tenants:
        topic = topic_name(t, DECODED, bus.prefix)
        assert await _fully_committed(bus, "shared", topic)


async def test_member_leaving_hands_over_its_partitions(bus: KafkaBus) -> None:
    topic = topic_name("a", DECODED, bus.prefix)
    await bus.ensure_topic(topic)
    async with bus.consumer("ho", DECODED) as survivor:
        async with bus.consumer("ho", DECODED) as leaver:

            async def both_assigned() -> bool:
                await asyncio.gather(survivor.poll(10, 0.2), leaver.poll(10, 0.2))
                return bool(survivor.assignment and leaver.assignment)

            await eventually(both_assigned, WAIT_S, "both members own partitions")
        # The leaver closed (left the group); the survivor takes all partitions and reads
        # everything, including what was published to the leaver's partitions.
        for d in range(9):
            await bus.publish(topic, _msgs(f"dev{d}", 0, 5))
        got = await collect(lambda: survivor.poll(500, 0.5), 45, WAIT_S)
        assert len({r.value for r in got}) == 45
        assert len(survivor.assignment) == 3


async def test_seek_replays(bus: KafkaBus) -> None:
    topic = topic_name("acme", DECODED, bus.prefix)
    await bus.publish(topic, _msgs("d1", 0, 5))
    async with bus.consumer("g", DECODED) as c:
        first = await collect(lambda: c.poll(500, 0.5), 5, WAIT_S)
        assert [_seq(r) for r in first] == [0, 1, 2, 3, 4]
        await c.seek(topic, first[0].partition, first[2].offset)
        again = await collect(lambda: c.poll(500, 0.5), 3, WAIT_S)
        assert [_seq(r) for r in again] == [2, 3, 4]
        assert [r.offset for r in again] == [r.offset for r in first[2:]]


async def test_reset_offsets_to_offset_and_time(bus: KafkaBus) -> None:
    topic = topic_name("acme", PERSISTED, bus.prefix)
    await bus.publish(topic, _msgs("d1", 0, 5))
    await asyncio.sleep(0.05)
    middle = now_ms()
    await asyncio.sleep(0.05)
    await bus.publish(topic, _msgs("d1", 5, 5))
    async with bus.consumer("replay", PERSISTED) as c:
        got = await collect(lambda: c.poll(500, 0.5), 10, WAIT_S)
        await c.commit(got)
    targets = await bus.reset_offsets("replay", PERSISTED, "acme", to_time_ms=middle)
    partition = got[0].partition
    assert targets[partition] == got[5].offset
    async with bus.consumer("replay", PERSISTED) as c:
        assert [_seq(r) for r in await collect(lambda: c.poll(500, 0.5), 5, WAIT_S)] == [5, 6, 7, 8, 9]
    await bus.reset_offsets("replay", PERSISTED, "acme", to_offset=0)
    async with bus.consumer("replay", PERSISTED) as c:
        assert [_seq(r) for r in await collect(lambda: c.poll(500, 0.5), 10, WAIT_S)] == list(range(10))
    assert await bus.reset_offsets("replay", PERSISTED, "nobody", to_offset=0) == {}


async def test_publish_to_a_foreign_topic_is_refused(bus: KafkaBus) -> None:
    from fieldgate.cloud.errors import BusError

    with pytest.raises(BusError):
        await bus.publish("not-ours", _msgs("d", 0, 1))


async def test_publish_fails_with_the_reason_when_the_broker_refuses(kafka: KafkaServer) -> None:
    from fieldgate.cloud.errors import BusError

    async with KafkaBus(kafka.bootstrap, prefix=_prefix(), topic_config={"max.message.bytes": "1000"}) as b:
        with pytest.raises(BusError, match=r"(?i)too large|MSG_SIZE"):
            await b.publish(topic_name("a", DECODED, b.prefix), [Message(b"d", b"x" * 5000)])
        assert b.stats.publish_failures == 1


async def test_real_pipeline_on_kafka(bus: KafkaBus, tmp_path: Path) -> None:
    """Inbound → registration → inbound → persistence, the real stages, on Kafka."""
    prefix = bus.prefix
    settings = StageSettings(poll_timeout_s=0.2)
    registry = SqliteRegistry(tmp_path / "registry")
    events = SqliteEventStore(tmp_path / "events")
    invocations = SqliteInvocationStore(tmp_path / "registry")
    inbound = InboundProcessing(bus, registry, invocations, settings=settings, topic_prefix=prefix)
    registration = Registration(bus, registry, DEFAULT_TENANTS, settings=settings, topic_prefix=prefix)
    persistence = EventPersistence(bus, events, settings=settings, topic_prefix=prefix)
    parts = (registry, invocations, events, registration, inbound, persistence)
    started: list[
        SqliteRegistry
        | SqliteInvocationStore
        | SqliteEventStore
        | Registration
        | InboundProcessing
        | EventPersistence
    ] = []
    try:
        for part in parts:
            await part.start()
            started.append(part)
        batch = [
            measurement(f"sensor-{d}", f"alt-{d}-{i}", temperature=float(i))
            for d in range(4)
            for i in range(25)
        ]
        decoded = topic_name("default", DECODED, prefix)
        by_device: dict[str, list[pb.Event]] = {}
        for ev in batch:
            by_device.setdefault(ev.device, []).append(ev)
        messages = [
            Message(key=d.encode(), value=pb.EventBatch(events=evs).SerializeToString())
            for d, evs in by_device.items()
        ]
        await bus.publish(decoded, messages)
        await bus.publish(decoded, messages)  # an edge retry: nothing may be stored twice

        async def stored() -> dict[str, list[pb.Event]]:
            out = {}
            for d in by_device:
                page = await events.list_device_events(EventQuery(tenant="default", device=d, page_size=1000))
                out[d] = [e for e in page.items if e.WhichOneof("payload") == "measurement"]
            return out

        async def all_stored() -> bool:
            return sum(len(v) for v in (await stored()).values()) >= len(batch)

        async def one_twice() -> bool:
            return sum(len(v) for v in (await stored()).values()) > len(batch)

        await eventually(all_stored, WAIT_S, "every event stored")
        # The retry's copies went through the same stages right behind: none may land.
        await never(one_twice, within=2.0, what="an event stored twice")
        final = await stored()
        for d, evs in by_device.items():
            assert sorted(e.alternate_id for e in final[d]) == sorted(e.alternate_id for e in evs)
        # The persistence stage announced what it stored on [persisted].
        persisted_topic = topic_name("default", PERSISTED, prefix)
        assert sum((await bus.end_offsets(persisted_topic)).values()) > 0
        # ... and committed everything it consumed from [enriched].
        enriched_topic = topic_name("default", ENRICHED, prefix)
        await eventually(
            lambda: _fully_committed(bus, "persistence", enriched_topic),
            WAIT_S,
            "persistence committed [enriched]",
        )
    finally:
        for running in reversed(started):
            await running.stop()
