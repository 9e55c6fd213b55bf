"""`fieldgate cloud replay` on the embedded bus: after records were consumed and committed by a
group, resetting that group to offset 0 (or to a time) makes a new consumer of the group see
them again, and the command line prints what it did per partition."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldgate.cli import main, replay
from fieldgate.cloud.bus import DECODED, Message, topic_name
from fieldgate.cloud.bus.embedded import EmbeddedBus
from fieldgate.cloud.config import CloudConfig

pytestmark = pytest.mark.integration

GROUP = "persistence-test"


async def _publish_and_consume(data_dir: Path, tenant: str = "t1") -> list[bytes]:
    """Publish three records, consume and commit them with GROUP; returns what was consumed."""
    async with EmbeddedBus(data_dir / "bus.db") as bus:
        await bus.publish(
            topic_name(tenant, DECODED), [Message(key=b"dev", value=v) for v in (b"a", b"b", b"c")]
        )
        seen: list[bytes] = []
        async with bus.consumer(GROUP, DECODED) as c:
            while len(seen) < 3 and (records := await c.poll(100, 2.0)):
                seen.extend(r.value for r in records)
                await c.commit(records)
    return seen


async def _consume_again(data_dir: Path) -> list[bytes]:
    async with EmbeddedBus(data_dir / "bus.db") as bus, bus.consumer(GROUP, DECODED) as c:
        seen: list[bytes] = []
        while records := await c.poll(100, 0.5):
            seen.extend(r.value for r in records)
        return seen


async def test_reset_to_offset_zero_replays_the_records(tmp_path: Path) -> None:
    assert await _publish_and_consume(tmp_path) == [b"a", b"b", b"c"]
    assert await _consume_again(tmp_path) == []  # committed: nothing new for the group

    conf = CloudConfig(data_dir=tmp_path)
    targets = await replay(conf, stage=DECODED, group=GROUP, tenant="t1", to_offset=0)
    assert targets == {0: 0}

    assert await _consume_again(tmp_path) == [b"a", b"b", b"c"]


async def test_reset_to_a_time_after_everything_skips_to_the_end(tmp_path: Path) -> None:
    await _publish_and_consume(tmp_path)
    conf = CloudConfig(data_dir=tmp_path)
    await replay(conf, stage=DECODED, group=GROUP, tenant="t1", to_offset=0)
    # far in the future: nothing is stamped at or after it, so the group goes to the end
    targets = await replay(conf, stage=DECODED, group=GROUP, tenant="t1", to_time_ms=2**41)
    assert targets == {0: 3}
    assert await _consume_again(tmp_path) == []


def test_command_line_prints_the_new_offsets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    asyncio.run(_publish_and_consume(tmp_path))
    config = tmp_path / "cloud.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    argv = ["cloud", "replay", "--config", str(config), "--stage", DECODED, "--group", GROUP]
    assert main([*argv, "--tenant", "t1", "--since", "1970-01-01T00:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "fieldgate.tenant.t1.decoded" in out
    assert "partition 0: next offset 0" in out
    assert asyncio.run(_consume_again(tmp_path)) == [b"a", b"b", b"c"]

    assert main([*argv, "--tenant", "t1", "--since", "not a time"]) == 2
    assert "--since" in capsys.readouterr().err
