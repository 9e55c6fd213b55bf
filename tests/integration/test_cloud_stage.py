"""The shared consume-process-commit loop on the real embedded bus: a record that keeps failing
is dead-lettered and the stage goes on; an unavailable store is retried, never dead-lettered;
what was committed is not seen again after a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from fieldgate.cloud.bus import DECODED, FAILED_DECODE, Message, Record, topic_name
from fieldgate.cloud.bus.embedded import EmbeddedBus
from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.pipeline.stage import ConsumerStage, StageSettings
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.integration

FAST = StageSettings(poll_timeout_s=0.1, retry_backoff_s=0.01, max_backoff_s=0.05, max_attempts=3)


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[EmbeddedBus]:
    b = EmbeddedBus(tmp_path / "bus.db")
    await b.start()
    yield b
    await b.stop()


async def publish(bus: EmbeddedBus, *values: bytes, tenant: str = "t1") -> None:
    await bus.publish(topic_name(tenant, DECODED), [Message(key=b"k", value=v) for v in values])


async def dead_letters(bus: EmbeddedBus) -> list[pb.FailedDecode]:
    out: list[pb.FailedDecode] = []
    async with bus.consumer("inspector", FAILED_DECODE) as c:
        while records := await c.poll(100, 0.3):
            out.extend(pb.FailedDecode.FromString(r.value) for r in records)
    return out


async def test_record_that_keeps_failing_is_dead_lettered(bus: EmbeddedBus) -> None:
    handled: list[bytes] = []
    attempts: dict[bytes, int] = {}

    async def handler(records: Sequence[Record]) -> None:
        for r in records:
            if r.value == b"bad":
                attempts[r.value] = attempts.get(r.value, 0) + 1
                raise ValueError("cannot handle this one")
        handled.extend(r.value for r in records)

    stage = ConsumerStage("t", bus, group="g", stage=DECODED, handler=handler, settings=FAST)
    await publish(bus, b"a", b"bad", b"c")
    await stage.start()
    try:
        await eventually(lambda: stage.stats.records == 3, what="three records committed")
        await publish(bus, b"d")
        await eventually(lambda: b"d" in handled, what="the stage keeps going")
    finally:
        await stage.stop()

    assert handled.count(b"a") >= 1 and b"c" in handled and b"bad" not in handled
    assert attempts[b"bad"] == 1 + FAST.max_attempts  # the batch attempt, then alone
    assert stage.stats.dead_lettered == 1
    dead = await dead_letters(bus)
    assert [d.payload for d in dead] == [b"bad"]
    assert "ValueError: cannot handle this one" in dead[0].reason
    assert dead[0].tenant == "t1"


async def test_unavailable_store_is_retried_not_dead_lettered(bus: EmbeddedBus) -> None:
    failures = 3
    handled: list[bytes] = []

    async def handler(records: Sequence[Record]) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise StoreError("database is locked")
        handled.extend(r.value for r in records)

    stage = ConsumerStage("t", bus, group="g", stage=DECODED, handler=handler, settings=FAST)
    await publish(bus, b"x", b"y")
    await stage.start()
    try:
        await eventually(lambda: handled == [b"x", b"y"], what="records handled after the outage")
    finally:
        await stage.stop()
    assert stage.stats.transient_failures == 3
    assert stage.stats.dead_lettered == 0


async def test_committed_records_are_not_seen_again(bus: EmbeddedBus) -> None:
    seen: list[bytes] = []

    async def handler(records: Sequence[Record]) -> None:
        seen.extend(r.value for r in records)

    await publish(bus, b"1", b"2", tenant="t1")
    await publish(bus, b"3", tenant="t2")
    stage = ConsumerStage("t", bus, group="g", stage=DECODED, handler=handler, settings=FAST)
    await stage.start()
    await eventually(lambda: len(seen) == 3, what="all records")
    await stage.stop()

    await publish(bus, b"4", tenant="t1")
    again = ConsumerStage("t", bus, group="g", stage=DECODED, handler=handler, settings=FAST)
    await again.start()
    try:
        await eventually(lambda: len(seen) == 4, what="the new record")
    finally:
        await again.stop()
    assert sorted(seen) == [b"1", b"2", b"3", b"4"]
