"""Deleting a tenant's topics on the embedded bus: records, committed offsets and consumer
positions of that tenant go, other tenants keep theirs, and a topic published again under the
same name starts over at offset 0 and is read from there by the same group."""

from __future__ import annotations

from pathlib import Path

from fieldgate.cloud.bus import DECODED, STAGES, Message, Record, topic_name
from fieldgate.cloud.bus.embedded import EmbeddedBus


async def test_delete_tenant_topics(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path / "bus.db", trim_interval_s=None)
    acme, globex = topic_name("acme", DECODED), topic_name("globex", DECODED)
    async with bus:
        assert await bus.ensure_tenant_topics("acme") == [topic_name("acme", s) for s in STAGES]
        for i in range(3):
            await bus.publish(acme, [Message(b"d", f"a{i}".encode())])
            await bus.publish(globex, [Message(b"d", f"g{i}".encode())])
        async with bus.consumer("inbound", DECODED) as consumer:
            got: list[Record] = []
            while len(got) < 6:
                got += await consumer.poll(timeout_s=1)
            await consumer.commit(got)
            assert bus.committed_offset("inbound", acme) == 3

            assert await bus.delete_tenant_topics("acme") == [acme]
            assert acme not in bus.end_offsets(DECODED)
            assert bus.committed_offset("inbound", acme) is None
            assert bus.committed_offset("inbound", globex) == 3
            assert await bus.delete_tenant_topics("acme") == []

            await bus.publish(acme, [Message(b"d", b"again")])
            assert bus.end_offsets(DECODED)[acme] == 1
            again = await consumer.poll(timeout_s=1)
            assert [(r.topic, r.offset, r.value) for r in again] == [(acme, 0, b"again")]
    # On disk too: a restarted bus has the new topic only, and globex's records.
    async with EmbeddedBus(tmp_path / "bus.db", trim_interval_s=None) as reopened:
        assert reopened.end_offsets(DECODED) == {acme: 1, globex: 3}
        assert reopened.committed_offset("inbound", acme) is None


async def test_a_late_commit_of_a_deleted_topic_does_not_skip_the_new_ones_records(tmp_path: Path) -> None:
    """A stage that commits what it read of a deleted tenant's topic after the tenant was
    created again (its batch was in hand during the deletion) must not move the new topic's
    offset: the new tenant's first records would never be read."""
    bus = EmbeddedBus(tmp_path / "bus.db", trim_interval_s=None)
    acme = topic_name("acme", DECODED)
    async with bus, bus.consumer("inbound", DECODED) as consumer:
        for i in range(3):
            await bus.publish(acme, [Message(b"d", f"old{i}".encode())])
        old: list[Record] = []
        while len(old) < 3:
            old += await consumer.poll(timeout_s=1)
        await bus.delete_tenant_topics("acme")
        await bus.publish(acme, [Message(b"d", b"new0")])
        await consumer.commit(old)  # late: the old topic's offset 3
        assert bus.committed_offset("inbound", acme) is None
        new = await consumer.poll(timeout_s=1)
        assert [(r.offset, r.value) for r in new] == [(0, b"new0")]
        await consumer.commit(old + new)  # the old records again: never past what was read
        assert bus.committed_offset("inbound", acme) == 1
    # Another member of the group (a restart) starts after new0, not after the old offset 3.
    async with EmbeddedBus(tmp_path / "bus.db", trim_interval_s=None) as reopened:
        await reopened.publish(acme, [Message(b"d", b"new1")])
        async with reopened.consumer("inbound", DECODED) as again:
            assert [r.value for r in await again.poll(timeout_s=1)] == [b"new1"]
