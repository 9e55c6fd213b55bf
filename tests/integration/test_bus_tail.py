"""Tail consumers of the embedded bus (``consumer(..., tail=True)``, used by cloud/services/live.py):
they start at the end of the log, read topics created later from their start, keep no
committed offsets and never hold back retention."""

from __future__ import annotations

from pathlib import Path

from fieldgate.cloud.bus import PERSISTED, Message, topic_name
from fieldgate.cloud.bus.embedded import EmbeddedBus
from tests.helpers.waiting import collect

A = topic_name("default", PERSISTED)
B = topic_name("beta", PERSISTED)


def _msgs(*values: str) -> list[Message]:
    return [Message(b"k", v.encode()) for v in values]


async def test_tail_starts_at_the_end_and_leaves_no_trace(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path / "bus.db", trim_interval_s=None)
    await bus.start()
    try:
        await bus.publish(A, _msgs("old-1", "old-2", "old-3"))
        async with (
            bus.consumer("live.x", PERSISTED, tail=True) as tail,
            bus.consumer("g", PERSISTED) as group,
        ):
            assert await tail.poll(timeout_s=0.1) == []  # history is not replayed
            await bus.publish(A, _msgs("new-1"))
            await bus.publish(B, _msgs("beta-1"))  # a topic created after the tail subscribed
            got = [r.value for r in await collect(lambda: tail.poll(timeout_s=0.2), 2, what="records")]
            assert sorted(got) == [b"beta-1", b"new-1"]
            await tail.commit(await tail.poll(timeout_s=0.05))  # a no-op, not an error
            records = await collect(lambda: group.poll(timeout_s=0.2), 5, what="records")
            assert len(records) == 5
            await group.commit(records)
        assert bus.committed_offset("live.x", A) is None
        # Only the real group counts for retention: everything it committed past is trimmed.
        assert await bus.trim() == 5
    finally:
        await bus.stop()
