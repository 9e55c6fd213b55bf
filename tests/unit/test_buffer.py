"""The durable buffer: group commit, bounds and overflow policies, reopen, failed-decode lane."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldgate.edge.buffer import EventBuffer
from fieldgate.edge.config import BufferConfig
from fieldgate.edge.errors import BufferFull
from fieldgate.v1 import events_pb2 as pb


def event(alt: str, device: str = "dev-1", value: float = 1.0) -> pb.Event:
    e = pb.Event(tenant="default", device=device, alternate_id=alt, event_time_ms=1_700_000_000_000)
    e.measurement.values["temperature"] = value
    return e


async def stored(buffer: EventBuffer) -> list[pb.Event]:
    out: list[pb.Event] = []
    cursor = 0
    while rows := await buffer.read_after(cursor, 1000):
        out.extend(pb.Event.FromString(data) for _, data in rows)
        cursor = rows[-1][0]
    return out


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[EventBuffer]:
    async with EventBuffer(BufferConfig(), tmp_path / "buffer.db") as buf:
        yield buf


async def test_concurrent_appends_share_commits_and_keep_every_event(buffer: EventBuffer) -> None:
    rng = random.Random(7)
    callers, calls = 100, 10

    async def caller(c: int) -> list[tuple[int, list[str]]]:
        done = []
        for k in range(calls):
            ids = [f"c{c}-{k}-{i}" for i in range(rng.randint(1, 5))]
            seq = await buffer.append([event(a, device=f"dev-{c}") for a in ids])
            done.append((seq, ids))
        return done

    results = await asyncio.gather(*(caller(c) for c in range(callers)))
    expected = [a for per in results for _, ids in per for a in ids]
    events = await stored(buffer)
    assert sorted(e.alternate_id for e in events) == sorted(expected)
    assert buffer.depth == len(expected)
    # Each caller's events come back in the order it appended them, with increasing seqs.
    for c, per in enumerate(results):
        seqs = [seq for seq, _ in per]
        assert seqs == sorted(seqs)
        mine = [e.alternate_id for e in events if e.device == f"dev-{c}"]
        assert mine == [a for _, ids in per for a in ids]
    # Group commit: far fewer transactions than append calls.
    assert buffer.stats.append_calls == callers * calls
    assert buffer.stats.commits < callers * calls / 5


async def test_events_round_trip_with_their_content(buffer: EventBuffer) -> None:
    original = event("a1", value=21.5)
    original.metadata["fw"] = "1.2"
    await buffer.append([original])
    [back] = await stored(buffer)
    assert back == original


async def test_ack_deletes_and_is_idempotent(buffer: EventBuffer) -> None:
    await buffer.append([event(f"e{i}") for i in range(10)])
    rows = await buffer.read_after(0, 4)
    await buffer.ack(rows[0][0], rows[-1][0])
    await buffer.ack(rows[0][0], rows[-1][0])
    assert buffer.depth == 6
    assert [e.alternate_id for e in await stored(buffer)] == [f"e{i}" for i in range(4, 10)]
    assert buffer.stats.acked == 4


async def test_seq_never_goes_back_after_everything_was_acked(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with EventBuffer(BufferConfig(), path) as buf:
        last = await buf.append([event("a"), event("b")])
        await buf.ack(0, last)
        assert buf.depth == 0
        newer = await buf.append([event("c")])
        assert newer > last
        assert [
            a for a in (pb.Event.FromString(d).alternate_id for _, d in await buf.read_after(last, 10))
        ] == ["c"]


async def test_reopen_keeps_unacked_events(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with EventBuffer(BufferConfig(), path) as buf:
        await buf.append([event(f"e{i}") for i in range(5)])
        first = (await buf.read_after(0, 1))[0][0]
        await buf.ack(first, first)
        last = buf.last_seq
    async with EventBuffer(BufferConfig(), path) as buf:
        assert buf.depth == 4
        assert buf.last_seq == last
        assert [e.alternate_id for e in await stored(buf)] == ["e1", "e2", "e3", "e4"]
        assert await buf.append([event("e5")]) == last + 1


async def test_drop_oldest_keeps_the_newest_and_counts_the_dropped(tmp_path: Path) -> None:
    config = BufferConfig(max_events=10, overflow="drop_oldest")
    async with EventBuffer(config, tmp_path / "b.db") as buf:
        for k in range(5):
            await buf.append([event(f"e{k * 5 + i}") for i in range(5)])
        assert buf.depth == 10
        assert buf.stats.dropped == 15
        assert [e.alternate_id for e in await stored(buf)] == [f"e{i}" for i in range(15, 25)]
        # A single append larger than the bound keeps its newest events.
        await buf.append([event(f"big{i}") for i in range(12)])
        assert [e.alternate_id for e in await stored(buf)] == [f"big{i}" for i in range(2, 12)]


async def test_reject_new_refuses_whole_appends_until_acked(tmp_path: Path) -> None:
    config = BufferConfig(max_events=10, overflow="reject_new")
    async with EventBuffer(config, tmp_path / "b.db") as buf:
        await buf.append([event(f"e{i}") for i in range(8)])
        with pytest.raises(BufferFull):
            await buf.append([event("x1"), event("x2"), event("x3")])
        assert buf.depth == 8
        assert buf.stats.rejected == 3
        # Concurrent appends in one commit: those that fit are stored, the rest refused.
        outcomes = await asyncio.gather(
            buf.append([event("a1"), event("a2")]),
            buf.append([event("b1")]),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], int)
        assert isinstance(outcomes[1], BufferFull)
        rows = await buf.read_after(0, 5)
        await buf.ack(rows[0][0], rows[-1][0])
        await buf.append([event("later")])
        ids = [e.alternate_id for e in await stored(buf)]
        assert ids == ["e5", "e6", "e7", "a1", "a2", "later"]


async def test_wait_for_data_wakes_on_commit_and_times_out(buffer: EventBuffer) -> None:
    seen = buffer.last_seq
    assert await buffer.wait_for_data(seen, max_wait_s=0.05) is False
    waiter = asyncio.create_task(buffer.wait_for_data(seen, max_wait_s=10))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await buffer.append([event("a")])
    assert await asyncio.wait_for(waiter, 5) is True


async def test_failed_decode_lane_is_bounded_and_inspectable(tmp_path: Path) -> None:
    config = BufferConfig(max_failed_decodes=3)
    async with EventBuffer(config, tmp_path / "b.db") as buf:
        for i in range(5):
            await buf.add_failed(
                source=f"fieldgate/default/devices/d{i}/events",
                tenant="default",
                reason=f"bad JSON #{i}",
                payload=b"{nope" + bytes([i]),
                received_ms=1000 + i,
            )
        assert buf.failed_depth == 3
        assert buf.stats.failed_decodes == 5
        assert buf.stats.failed_dropped == 2
        newest = await buf.failed_decodes(10)
        assert [f.reason for f in newest] == ["bad JSON #4", "bad JSON #3", "bad JSON #2"]
        assert newest[0].payload == b"{nope\x04"
        assert newest[0].source == "fieldgate/default/devices/d4/events"
        assert newest[0].received_time_ms == 1004
    async with EventBuffer(config, tmp_path / "b.db") as buf:
        assert buf.failed_depth == 3


async def test_close_commits_appends_already_queued(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buf = EventBuffer(BufferConfig(), path)
    await buf.open()
    pending = [asyncio.create_task(buf.append([event(f"e{i}")])) for i in range(50)]
    await asyncio.sleep(0)
    await buf.close()
    await buf.close()
    await asyncio.gather(*pending)
    async with EventBuffer(BufferConfig(), path) as again:
        assert again.depth == 50
