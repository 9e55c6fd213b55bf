"""The embedded bus as the pipeline stages use it: publish, poll, commit, restart, replay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldgate.cloud.bus import (
    COMMAND_INVOCATIONS,
    DECODED,
    ENRICHED,
    Message,
    Record,
    topic_name,
)
from fieldgate.cloud.bus.embedded import EmbeddedBus, EmbeddedConsumer
from fieldgate.cloud.errors import BusError
from fieldgate.timeutil import now_ms
from tests.helpers.waiting import collect

T_A = topic_name("acme", DECODED)
T_B = topic_name("globex", DECODED)


def msgs(*values: str, key: str = "dev-1") -> list[Message]:
    return [Message(key.encode(), v.encode()) for v in values]


def values(records: list[Record]) -> list[str]:
    return [r.value.decode() for r in records]


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[EmbeddedBus]:
    b = EmbeddedBus(tmp_path / "bus.db", trim_interval_s=None)
    await b.start()
    yield b
    await b.stop()


async def drain(c: EmbeddedConsumer, want: int) -> list[Record]:
    """Poll until ``want`` records arrived (:func:`tests.helpers.waiting.collect`)."""
    return await collect(lambda: c.poll(max_records=500, timeout_s=0.5), want, what="records")


async def test_publish_then_poll_returns_records_in_order_with_offsets(bus: EmbeddedBus) -> None:
    await bus.publish(T_A, msgs("a", "b"))
    await bus.publish(T_A, msgs("c"))
    async with bus.consumer("g", DECODED) as c:
        records = await drain(c, 3)
    assert values(records) == ["a", "b", "c"]
    assert [r.offset for r in records] == [0, 1, 2]
    assert all(r.topic == T_A and r.partition == 0 and r.key == b"dev-1" for r in records)
    assert all(abs(r.timestamp_ms - now_ms()) < 60_000 for r in records)


async def test_poll_respects_max_records_and_continues_after_uncommitted_reads(bus: EmbeddedBus) -> None:
    await bus.publish(T_A, msgs(*[str(i) for i in range(10)]))
    async with bus.consumer("g", DECODED) as c:
        first = await c.poll(max_records=4, timeout_s=1)
        second = await c.poll(max_records=100, timeout_s=1)
    assert values(first) == ["0", "1", "2", "3"]
    assert values(second) == [str(i) for i in range(4, 10)]


async def test_empty_poll_returns_after_timeout(bus: EmbeddedBus) -> None:
    async with bus.consumer("g", DECODED) as c:
        assert await c.poll(timeout_s=0.05) == []


async def test_restart_resumes_after_committed_offset(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    async with EmbeddedBus(path) as bus:
        await bus.publish(T_A, msgs("a", "b", "c", "d"))
        async with bus.consumer("g", DECODED) as c:
            got = await drain(c, 4)
            await c.commit(got[:2])  # processed a, b; c and d were read but not committed
    async with EmbeddedBus(path) as bus:
        await bus.publish(T_A, msgs("e"))
        async with bus.consumer("g", DECODED) as c:
            again = await drain(c, 3)
    assert values(again) == ["c", "d", "e"]
    assert [r.offset for r in again] == [2, 3, 4]


async def test_records_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    async with EmbeddedBus(path) as bus:
        await bus.publish(T_A, msgs("a"))
        await bus.publish(T_B, msgs("b"))
    async with EmbeddedBus(path) as bus:
        await bus.publish(T_A, msgs("c"))
        async with bus.consumer("g", DECODED) as c:
            records = await drain(c, 3)
    by_topic = {(r.topic, r.offset): r.value for r in records}
    assert by_topic == {(T_A, 0): b"a", (T_A, 1): b"c", (T_B, 0): b"b"}


async def test_a_directory_path_means_bus_db_inside_it(tmp_path: Path) -> None:
    async with EmbeddedBus(tmp_path) as bus:
        await bus.publish(T_A, msgs("a"))
    assert (tmp_path / "bus.db").exists()


async def test_consumer_wakes_promptly_when_something_is_published(bus: EmbeddedBus) -> None:
    async with bus.consumer("g", DECODED) as c:
        waiting = asyncio.create_task(c.poll(timeout_s=30))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await bus.publish(T_A, msgs("wake"))
        records = await asyncio.wait_for(waiting, 5)
    assert values(records) == ["wake"]


async def test_pattern_subscription_sees_topics_created_after_it_started(bus: EmbeddedBus) -> None:
    await bus.publish(T_A, msgs("old tenant"))
    async with bus.consumer("g", DECODED) as c:
        assert values(await drain(c, 1)) == ["old tenant"]
        waiting = asyncio.create_task(c.poll(timeout_s=30))
        await asyncio.sleep(0.05)
        new_topic = topic_name("newco", DECODED)
        await bus.publish(new_topic, msgs("new tenant"))
        records = await asyncio.wait_for(waiting, 5)
    assert [(r.topic, r.value) for r in records] == [(new_topic, b"new tenant")]


async def test_consumer_reads_only_its_stage(bus: EmbeddedBus) -> None:
    await bus.publish(topic_name("acme", ENRICHED), msgs("enriched"))
    await bus.publish(topic_name("acme", COMMAND_INVOCATIONS), msgs("command"))
    await bus.publish(T_A, msgs("decoded"))
    async with bus.consumer("g", DECODED) as c:
        records = await drain(c, 1)
        assert await c.poll(timeout_s=0.05) == []
    assert values(records) == ["decoded"]


async def test_two_groups_are_independent(bus: EmbeddedBus) -> None:
    await bus.publish(T_A, msgs("a", "b"))
    async with bus.consumer("g1", DECODED) as c1:
        got1 = await drain(c1, 2)
        await c1.commit(got1)
    async with bus.consumer("g2", DECODED) as c2:
        got2 = await drain(c2, 2)
    assert values(got1) == values(got2) == ["a", "b"]
    assert bus.committed_offset("g1", T_A) == 2
    assert bus.committed_offset("g2", T_A) is None


async def test_many_tenants_all_delivered(bus: EmbeddedBus) -> None:
    topics = [topic_name(f"tenant-{i}", DECODED) for i in range(5)]
    for t in topics:
        await bus.publish(t, msgs(*[f"{t}/{j}" for j in range(20)]))
    async with bus.consumer("g", DECODED) as c:
        records = await drain(c, 100)
    for t in topics:
        assert [r.value.decode() for r in records if r.topic == t] == [f"{t}/{j}" for j in range(20)]


async def test_concurrent_publishers_lose_nothing_and_keep_per_publisher_order(bus: EmbeddedBus) -> None:
    async def producer(n: int) -> None:
        for i in range(50):
            await bus.publish(T_A, msgs(f"{n}:{i}"))

    async with bus.consumer("g", DECODED) as c:
        consumed = asyncio.create_task(drain(c, 400))
        await asyncio.gather(*(producer(n) for n in range(8)))
        records = await consumed
    assert [r.offset for r in records] == list(range(400))
    for n in range(8):
        assert [v for v in values(records) if v.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(50)]
    # Concurrent publishes shared transactions (group commit).
    assert bus.stats.write_transactions < bus.stats.publish_calls + 2


async def test_seek_replays_from_an_offset(bus: EmbeddedBus) -> None:
    await bus.publish(T_A, msgs("a", "b", "c"))
    async with bus.consumer("g", DECODED) as c:
        await c.commit(await drain(c, 3))
        await c.seek(T_A, 0, 1)
        replay = await drain(c, 2)
    assert values(replay) == ["b", "c"]


async def test_seek_rejects_other_stages_and_partitions(bus: EmbeddedBus) -> None:
    async with bus.consumer("g", DECODED) as c:
        with pytest.raises(BusError):
            await c.seek(topic_name("acme", ENRICHED), 0, 0)
        with pytest.raises(BusError):
            await c.seek(T_A, 3, 0)


async def test_reset_offsets_to_offset_replays_for_the_next_consumer(bus: EmbeddedBus) -> None:
    await bus.publish(T_A, msgs("a", "b", "c"))
    await bus.publish(T_B, msgs("x"))
    async with bus.consumer("g", DECODED) as c:
        await c.commit(await drain(c, 4))
    assert await bus.reset_offsets("g", DECODED, "acme", to_offset=1) == {0: 1}
    async with bus.consumer("g", DECODED) as c:
        replay = await drain(c, 2)
        assert await c.poll(timeout_s=0.05) == []  # globex was not reset
    assert values(replay) == ["b", "c"]


async def test_reset_offsets_applies_to_a_live_member(bus: EmbeddedBus) -> None:
    await bus.publish(T_A, msgs("a", "b"))
    async with bus.consumer("g", DECODED) as c:
        await c.commit(await drain(c, 2))
        await bus.reset_offsets("g", DECODED, "acme", to_offset=0)
        assert values(await drain(c, 2)) == ["a", "b"]


async def test_reset_offsets_to_time(bus: EmbeddedBus) -> None:
    await bus.publish(T_A, msgs("before"))
    await asyncio.sleep(0.02)
    cut = now_ms()
    await asyncio.sleep(0.02)
    await bus.publish(T_A, msgs("after-1", "after-2"))
    async with bus.consumer("g", DECODED) as c:
        await c.commit(await drain(c, 3))
    assert await bus.reset_offsets("g", DECODED, "acme", to_time_ms=cut) == {0: 1}
    assert await bus.reset_offsets("g2", DECODED, "acme", to_time_ms=now_ms() + 60_000) == {0: 3}
    async with bus.consumer("g", DECODED) as c:
        assert values(await drain(c, 2)) == ["after-1", "after-2"]


async def test_reset_offsets_needs_exactly_one_target(bus: EmbeddedBus) -> None:
    with pytest.raises(BusError):
        await bus.reset_offsets("g", DECODED, "acme")
    with pytest.raises(BusError):
        await bus.reset_offsets("g", DECODED, "acme", to_offset=0, to_time_ms=0)


async def test_a_second_member_of_a_group_waits_and_takes_over(bus: EmbeddedBus) -> None:
    await bus.publish(T_A, msgs("a", "b", "c"))
    async with bus.consumer("g", DECODED) as first, bus.consumer("g", DECODED) as second:
        assert first.active and not second.active
        got = await drain(first, 3)
        await first.commit(got[:1])
        assert await second.poll(timeout_s=0.05) == []
        await first.__aexit__(None, None, None)  # the active member leaves ...
        assert second.active
        # ... and the standby resumes at the group's committed offset.
        assert values(await drain(second, 2)) == ["b", "c"]


async def test_trim_deletes_only_what_every_group_committed(bus: EmbeddedBus) -> None:
    await bus.publish(T_A, msgs(*[str(i) for i in range(10)]))
    async with bus.consumer("fast", DECODED) as fast, bus.consumer("slow", DECODED) as slow:
        await fast.commit(await drain(fast, 10))
        await slow.commit((await drain(slow, 10))[:4])
    assert await bus.trim() == 4
    assert await bus.trim() == 0
    async with bus.consumer("slow", DECODED) as slow:
        assert values(await drain(slow, 6)) == [str(i) for i in range(4, 10)]
    # A new group starts at the earliest record still stored.
    async with bus.consumer("late", DECODED) as late:
        assert [r.offset for r in await drain(late, 6)] == list(range(4, 10))


async def test_trim_keeps_records_of_a_stage_nobody_subscribed_for_a_while(tmp_path: Path) -> None:
    async with EmbeddedBus(tmp_path / "keep.db", trim_interval_s=None) as bus:
        await bus.publish(T_A, msgs("a"))
        assert await bus.trim() == 0
        async with bus.consumer("g", DECODED) as c:
            assert values(await drain(c, 1)) == ["a"]
    async with EmbeddedBus(tmp_path / "drop.db", unsubscribed_retention_ms=0, trim_interval_s=None) as bus:
        await bus.publish(T_A, msgs("a"))
        await asyncio.sleep(0.01)
        assert await bus.trim() == 1


async def test_deleted_group_no_longer_holds_back_trimming(bus: EmbeddedBus) -> None:
    await bus.publish(T_A, msgs("a", "b"))
    async with bus.consumer("live", DECODED) as c:
        await c.commit(await drain(c, 2))
    async with bus.consumer("gone", DECODED):
        pass
    assert await bus.trim() == 0
    await bus.delete_group("gone")
    assert await bus.trim() == 2


async def test_time_retention_trims_unconsumed_records(tmp_path: Path) -> None:
    async with EmbeddedBus(tmp_path / "bus.db", retention_ms=0, trim_interval_s=None) as bus:
        await bus.publish(T_A, msgs("a", "b"))
        await asyncio.sleep(0.01)
        assert await bus.trim() == 2
        await bus.publish(T_A, msgs("c"))
        async with bus.consumer("g", DECODED) as c:
            records = await drain(c, 1)
    assert [(r.offset, r.value) for r in records] == [(2, b"c")]


async def test_offsets_continue_after_trimming_everything_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    async with EmbeddedBus(path) as bus:
        await bus.publish(T_A, msgs("a", "b"))
        async with bus.consumer("g", DECODED) as c:
            await c.commit(await drain(c, 2))
        assert await bus.trim() == 2
    async with EmbeddedBus(path) as bus:
        await bus.publish(T_A, msgs("c"))
        async with bus.consumer("g", DECODED) as c:
            records = await drain(c, 1)
    assert [(r.offset, r.value) for r in records] == [(2, b"c")]


async def test_publish_to_a_foreign_topic_is_refused(bus: EmbeddedBus) -> None:
    with pytest.raises(BusError):
        await bus.publish("some.other.topic", msgs("x"))
    with pytest.raises(BusError):
        await bus.publish(topic_name("acme", "no-such-stage"), msgs("x"))


async def test_large_records_are_split_across_polls_by_size(tmp_path: Path) -> None:
    async with EmbeddedBus(tmp_path / "bus.db", max_poll_bytes=250_000) as bus:
        big = "x" * 100_000
        await bus.publish(T_A, msgs(*[big] * 6))
        async with bus.consumer("g", DECODED) as c:
            first = await c.poll(max_records=500, timeout_s=1)
            rest = await drain(c, 6 - len(first))
    assert 1 <= len(first) < 6
    assert [r.offset for r in first + rest] == list(range(6))


async def test_after_stop_publish_and_poll_raise(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path / "bus.db")
    await bus.publish(T_A, msgs("a"))  # starts implicitly
    consumer = bus.consumer("g", DECODED)
    await consumer.__aenter__()
    assert values(await consumer.poll(timeout_s=1)) == ["a"]
    waiting = asyncio.create_task(consumer.poll(timeout_s=30))
    await asyncio.sleep(0.05)
    await bus.stop()
    with pytest.raises(BusError):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(BusError):
        await bus.publish(T_A, msgs("b"))


async def test_poll_outside_the_context_manager_raises(bus: EmbeddedBus) -> None:
    with pytest.raises(BusError):
        await bus.consumer("g", DECODED).poll(timeout_s=0)
