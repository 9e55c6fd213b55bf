"""The uplink against a real gRPC server playing the cloud (tests/helpers/edge_cloud.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from fieldgate.edge.buffer import EventBuffer
from fieldgate.edge.config import BufferConfig, UplinkConfig
from fieldgate.edge.uplink import Uplink, encode_batch
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.edge_cloud import TestCloud
from tests.helpers.waiting import eventually, free_port, never


def events(prefix: str, n: int, device: str = "dev-1") -> list[pb.Event]:
    out = []
    for i in range(n):
        e = pb.Event(tenant="default", device=device, alternate_id=f"{prefix}-{i}")
        e.measurement.values["n"] = float(i)
        out.append(e)
    return out


class MemoryOutbox:
    """A status outbox that forgets on restart; enough to see what the uplink confirms."""

    def __init__(self) -> None:
        self.pending: dict[str, svc.CommandStatusUpdate] = {}
        self.confirmed: list[tuple[str, int]] = []

    async def unconfirmed_statuses(self) -> list[svc.CommandStatusUpdate]:
        return list(self.pending.values())

    async def confirm_statuses(self, keys: Sequence[tuple[str, int]]) -> None:
        for inv, status in keys:
            if inv in self.pending and self.pending[inv].status == status:
                del self.pending[inv]
            self.confirmed.append((inv, status))


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[EventBuffer]:
    async with EventBuffer(BufferConfig(), tmp_path / "buffer.db") as buf:
        yield buf


async def no_commands(_: svc.CommandDown) -> None:
    raise AssertionError("no command expected")


def test_pre_encoded_batch_is_a_valid_edge_message() -> None:
    evs = events("x", 3)
    raw = encode_batch(300, [e.SerializeToString() for e in evs])
    parsed = svc.EdgeMessage.FromString(raw)
    assert parsed == svc.EdgeMessage(batch=svc.EventBatchUp(seq=300, events=evs))


@pytest.mark.integration
async def test_batches_are_acked_and_the_buffer_empties(buffer: EventBuffer) -> None:
    await buffer.append(events("a", 5000))
    config = UplinkConfig(batch_max_events=500, batch_max_delay_ms=5)
    async with TestCloud() as cloud:
        uplink = Uplink(config.model_copy(update={"target": cloud.target}), "edge-t", buffer, no_commands)
        await uplink.start()
        try:
            await cloud.wait_until(lambda: len(cloud.events) == 5000)
            await eventually(lambda: buffer.depth == 0, 10)
            assert cloud.hellos == ["edge-t"]
            assert cloud.unique_ids() == {f"a-{i}" for i in range(5000)}
            assert cloud.batches >= 10
            # New events flow on the same stream.
            await buffer.append(events("b", 3))
            await cloud.wait_until(lambda: len(cloud.events) == 5003)
            await eventually(lambda: buffer.depth == 0, 10)
            assert uplink.stats.events_acked == 5003
        finally:
            await uplink.stop()


@pytest.mark.integration
async def test_cloud_outage_loses_nothing(buffer: EventBuffer) -> None:
    config = UplinkConfig(
        batch_max_events=200, batch_max_delay_ms=5, backoff_initial_s=0.05, backoff_max_s=0.5
    )
    cloud = TestCloud()
    await cloud.start()
    uplink = Uplink(config.model_copy(update={"target": cloud.target}), "edge-o", buffer, no_commands)
    await uplink.start()
    produced: list[str] = []

    async def produce() -> None:
        # Bounded: 150 rounds of 20 events, ~10 ms apart (about 3 s).
        for r in range(150):
            batch = events(f"r{r}", 20, device=f"dev-{r % 5}")
            await buffer.append(batch)
            produced.extend(e.alternate_id for e in batch)
            await asyncio.sleep(0.01)

    try:
        producer = asyncio.create_task(produce())
        await cloud.wait_until(lambda: len(cloud.events) > 200)
        await cloud.stop()  # outage while events keep arriving
        await eventually(
            lambda: not uplink.connected and buffer.depth > 0, 30, "a backlog builds up during the outage"
        )
        backlog = buffer.depth
        await cloud.start()
        await producer
        await cloud.wait_until(lambda: len(cloud.events) == len(produced), within_s=60)
        await eventually(lambda: buffer.depth == 0, 30)
    finally:
        await uplink.stop()
        await cloud.stop()
    assert backlog > 0
    assert cloud.unique_ids() == set(produced)
    assert len(produced) == 3000
    assert cloud.received >= len(produced)  # duplicates are allowed on the wire
    assert uplink.stats.reconnects >= 1
    assert uplink.stats.sessions >= 2


@pytest.mark.integration
async def test_unacknowledged_batches_are_bounded_and_resent(buffer: EventBuffer) -> None:
    config = UplinkConfig(batch_max_events=10, batch_max_delay_ms=0, max_inflight_batches=2)
    await buffer.append(events("w", 100))
    async with TestCloud(ack=False) as cloud:
        uplink = Uplink(config.model_copy(update={"target": cloud.target}), "edge-w", buffer, no_commands)
        await uplink.start()
        try:
            await cloud.wait_until(lambda: cloud.batches == 2)
            await never(lambda: cloud.batches > 2, within=0.5, what="a third batch before an ack")
            assert buffer.depth == 100
            await cloud.release_acks()
            await cloud.wait_until(lambda: len(cloud.events) == 100)
            await eventually(lambda: buffer.depth == 0, 10)
        finally:
            await uplink.stop()


@pytest.mark.integration
async def test_reconnect_backoff_is_capped_while_the_cloud_is_down(buffer: EventBuffer) -> None:
    port = free_port()
    config = UplinkConfig(target=f"127.0.0.1:{port}", backoff_initial_s=0.02, backoff_max_s=0.2)
    uplink = Uplink(config, "edge-b", buffer, no_commands, rng=random.Random(3))
    await buffer.append(events("k", 10))
    await uplink.start()
    try:
        # Capped at 0.2 s: the attempts keep coming, and no wait is ever longer.
        longest = 0.0
        for _ in range(1000):  # at most ~20 s
            longest = max(longest, uplink.stats.last_backoff_s)
            if uplink.stats.reconnects >= 10:
                break
            await asyncio.sleep(0.02)
        assert uplink.stats.reconnects >= 10
        assert not uplink.connected
        assert 0.1 <= longest <= 0.2
        async with TestCloud(port=port) as cloud:
            await cloud.wait_until(lambda: len(cloud.events) == 10, within_s=10)
    finally:
        await uplink.stop()


@pytest.mark.integration
async def test_commands_come_down_and_statuses_go_up_after_an_outage(buffer: EventBuffer) -> None:
    received: list[svc.CommandDown] = []
    outbox = MemoryOutbox()

    async def on_command(down: svc.CommandDown) -> None:
        received.append(down)

    config = UplinkConfig(backoff_initial_s=0.05, backoff_max_s=0.2, batch_max_delay_ms=1)
    cloud = TestCloud()
    await cloud.start()
    uplink = Uplink(
        config.model_copy(update={"target": cloud.target}), "edge-c", buffer, on_command, outbox=outbox
    )
    await uplink.start()
    try:
        await cloud.wait_for_session()
        down = svc.CommandDown(
            tenant="default",
            device="dev-1",
            invocation=pb.CommandInvocation(invocation="inv-1", command="ping"),
        )
        await cloud.send_command(down)
        await eventually(lambda: len(received) == 1, 10)
        assert received[0] == down

        # A status produced during an outage reaches the cloud once it is back.
        await cloud.stop()
        await eventually(lambda: not uplink.connected, 10)
        update = svc.CommandStatusUpdate(
            tenant="default", device="dev-1", invocation="inv-1", status=svc.COMMAND_STATUS_DELIVERED
        )
        outbox.pending["inv-1"] = update
        await uplink.send_status(update)  # not connected: kept by the outbox
        await cloud.start()
        await cloud.wait_until(lambda: any(s.invocation == "inv-1" for s in cloud.statuses))
        # It is confirmed once a batch sent after it is acknowledged.
        assert "inv-1" in outbox.pending
        await buffer.append(events("after", 1))
        await eventually(lambda: "inv-1" not in outbox.pending, 10)
        assert ("inv-1", svc.COMMAND_STATUS_DELIVERED) in outbox.confirmed
    finally:
        await uplink.stop()
        await cloud.stop()


@pytest.mark.integration
async def test_a_cloud_back_after_a_long_outage_is_noticed_within_a_probe_interval(
    buffer: EventBuffer,
) -> None:
    """Backoff at its 20 s cap, the cloud returns: the probe ends the wait within ~1 s."""
    port = free_port()
    config = UplinkConfig(
        target=f"127.0.0.1:{port}", backoff_initial_s=20.0, backoff_max_s=20.0, probe_interval_s=0.3
    )
    uplink = Uplink(config, "edge-p", buffer, no_commands, rng=random.Random(5))
    await buffer.append(events("p", 10))
    await uplink.start()
    try:
        await eventually(lambda: uplink.stats.reconnects >= 1, 10, "first failure")
        assert uplink.stats.last_backoff_s >= 10.0  # equal jitter: at least half the cap
        # The cloud returns while the uplink is in that wait (at least ~10 s still to go).
        async with TestCloud(port=port) as cloud:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await cloud.wait_until(lambda: len(cloud.events) == 10, within_s=9)
            assert loop.time() - t0 < 8.0, "waited for the backoff instead of the probe"
        assert uplink.stats.probe_shortcuts >= 1
    finally:
        await uplink.stop()


@pytest.mark.integration
async def test_without_probing_the_whole_backoff_is_slept(buffer: EventBuffer) -> None:
    port = free_port()
    config = UplinkConfig(
        target=f"127.0.0.1:{port}", backoff_initial_s=4.0, backoff_max_s=4.0, probe_interval_s=0
    )
    uplink = Uplink(config, "edge-np", buffer, no_commands, rng=random.Random(5))
    await buffer.append(events("n", 5))
    await uplink.start()
    try:
        await eventually(lambda: uplink.stats.reconnects >= 1, 10, "first failure")
        async with TestCloud(port=port) as cloud:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await cloud.wait_until(lambda: len(cloud.events) == 5, within_s=10)
            # The wait was at least half the 4 s cap minus what had passed already.
            assert loop.time() - t0 > 0.5
        assert uplink.stats.probe_shortcuts == 0
    finally:
        await uplink.stop()
