"""`fieldgate cloud replay` on a real Kafka: a group that consumed and committed a tenant's
topic re-reads it after the command resets it to offset 0, per partition; while a member of
the group is live, Kafka refuses and the command says to stop the consumers first."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from fieldgate.cli import replay
from fieldgate.cloud.bus import ENRICHED, Message, topic_name
from fieldgate.cloud.bus.kafka import KafkaBus
from fieldgate.cloud.config import BusConfig, CloudConfig
from fieldgate.cloud.errors import BusError
from fieldgate.devservers import KafkaServer
from tests.helpers.waiting import collect

pytestmark = pytest.mark.distributed

WAIT_S = 60.0
GROUP = "persistence"


async def test_replay_resets_the_group_to_the_beginning(kafka: KafkaServer, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    conf = CloudConfig(
        data_dir=tmp_path,
        bus=BusConfig(kind="kafka", bootstrap=kafka.bootstrap, topic_prefix=prefix, partitions=3),
    )
    values = [f"d{i % 4}:{i}".encode() for i in range(12)]
    async with KafkaBus(
        kafka.bootstrap, prefix=prefix, partitions=3, metadata_refresh_ms=1000, session_timeout_ms=6000
    ) as bus:
        await bus.publish(
            topic_name("acme", ENRICHED, prefix), [Message(key=v.split(b":")[0], value=v) for v in values]
        )
        async with bus.consumer(GROUP, ENRICHED) as c:
            first = await collect(lambda: c.poll(500, 0.5), len(values), WAIT_S)
            await c.commit(first)
            assert sorted(r.value for r in first) == sorted(values)
            with pytest.raises(BusError, match="stop its consumers"):
                await replay(conf, stage=ENRICHED, group=GROUP, tenant="acme", to_offset=0)

        targets = await replay(conf, stage=ENRICHED, group=GROUP, tenant="acme", to_offset=0)
        assert targets == {0: 0, 1: 0, 2: 0}

        async with bus.consumer(GROUP, ENRICHED) as c:
            again = await collect(lambda: c.poll(500, 0.5), len(values), WAIT_S)
        assert sorted(r.value for r in again) == sorted(values)
