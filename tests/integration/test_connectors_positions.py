"""Connectors keep their word about *which* events they send (cloud/pipeline/connectors/progress.py), on
the real embedded bus and SQLite connector store with real HTTP receivers:

* a connector delivers every event stored after its creation, however late the stage notices
  it (here: only when told to refresh, long after the events were read and committed) — and
  none stored before;
* one dead webhook holding the bus's watermark back does not make a healthy connector re-send
  what it delivered, across a restart of the stage.

The same on Kafka and Cassandra: tests/distributed/test_connectors_kafka.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldgate.cloud.pipeline.connectors.stage import ConnectorStageSettings
from fieldgate.cloud.services.connectors import ConnectorAdmin
from tests.helpers.connectors import (
    LOOPBACK_TARGETS,
    SECRET,
    TENANT,
    StageRig,
    make_event,
    publish,
    stage_rig,
    webhook,
)
from tests.helpers.waiting import eventually
from tests.helpers.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.integration

#: The stage notices definitions only when the test calls refresh().
SLOW_REFRESH = ConnectorStageSettings(refresh_s=3600, poll_timeout_s=0.1)


def _caught_up(rig: StageRig) -> bool:
    return rig.committed() == rig.end()


async def test_a_connector_noticed_late_delivers_everything_stored_after_its_creation(tmp_path: Path) -> None:
    before = [make_event(i) for i in range(3)]
    after = [make_event(i) for i in range(3, 8)]
    async with webhook_receiver(secret=SECRET) as rx, stage_rig(tmp_path, [], settings=SLOW_REFRESH) as rig:
        await publish(rig.bus, before)
        await eventually(lambda: _caught_up(rig), what="the stage read the first events")
        admin = ConnectorAdmin(rig.store, rig.bus, LOOPBACK_TARGETS)
        await admin.create(TENANT, webhook("late", rx.url))
        await publish(rig.bus, after)
        # The stage reads and commits them before it knows the connector exists.
        await eventually(lambda: _caught_up(rig), what="the stage read the later events")
        assert rig.stage.runner(TENANT, "late") is None
        await rig.stage.refresh()
        await eventually(lambda: len(set(rx.event_ids())) >= len(after), what="late delivery")
        assert rx.event_ids() == [e.id for e in after]  # in order, nothing from before
        assert rig.stage.stats.seeks >= 1
        # A second connector, noticed late while the first one is running: the first does not
        # get anything twice.
        rx2_events = [make_event(i) for i in range(8, 10)]
        async with webhook_receiver(secret=SECRET) as rx2:
            await admin.create(TENANT, webhook("later", rx2.url))
            await publish(rig.bus, rx2_events)
            await eventually(lambda: len(rx.event_ids()) == 7, what="first connector delivery")
            await rig.stage.refresh()
            await eventually(lambda: len(rx2.event_ids()) == 2, what="second connector delivery")
            assert rx2.event_ids() == [e.id for e in rx2_events]
            await eventually(lambda: _caught_up(rig), what="commit")
        assert rx.duplicates == 0 and rx.event_ids() == [e.id for e in after + rx2_events]


async def test_a_dead_webhook_does_not_make_a_healthy_one_resend(tmp_path: Path) -> None:
    first = [make_event(i) for i in range(10)]
    second = [make_event(i) for i in range(10, 15)]
    async with webhook_receiver(secret=SECRET) as ok, webhook_receiver(secret=SECRET) as dead:
        dead.mode = "500"
        specs = [webhook("healthy", ok.url), webhook("dead", dead.url, max_attempts=100)]
        async with stage_rig(tmp_path, specs) as rig:
            await publish(rig.bus, first)
            await eventually(lambda: len(ok.event_ids()) == 10, what="healthy delivery")
            assert (rig.committed() or 0) < rig.end()  # the dead one holds the watermark back
            # A restart (a deploy, a crash with a clean stop): the bus is re-read from the
            # watermark; the healthy connector must pass over what it delivered.
            await rig.stage.stop()
            await rig.stage.start()
            await publish(rig.bus, second)
            # Re-sends would come before the new events (a connector delivers in order).
            await eventually(lambda: len(set(ok.event_ids())) == 15, what="healthy delivery")
            assert ok.duplicates == 0
            assert ok.event_ids() == [e.id for e in first + second]
            dead.mode = "ok"
            await eventually(
                lambda: set(dead.event_ids()) == {e.id for e in first + second},
                what="the dead one recovers",
                timeout=30,
            )
            await eventually(lambda: _caught_up(rig), what="commit")
        assert ok.duplicates == 0
