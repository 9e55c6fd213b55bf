"""The state stage's presence clock over each state store (SQLite, and Cassandra marked
distributed): a changed presence interval or ``missing_data`` window applies to devices that
are already silent — in the replica where it was made and in another one that learns of it
later — and the rebuilt schedule never delays a check.

The stage runs with a chosen clock and a bus that records what it publishes, so the times are
exact; the states and the rule rows are the backend's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from fieldgate.cloud.bus import Bus, Message
from fieldgate.cloud.config import TenantConfig
from fieldgate.cloud.domain.rules.engine import RuleState
from fieldgate.cloud.domain.rules.model import RULE_ADAPTER
from fieldgate.cloud.pipeline.rules import RuleBook
from fieldgate.cloud.pipeline.state import DeviceStateStage
from fieldgate.cloud.services.rules import RuleService
from fieldgate.cloud.store.backend import storage_backend
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.store.state import DeviceState, DeviceStateStore
from fieldgate.cloud.zk.models import TenantSettingsRegistry
from fieldgate.v1 import events_pb2 as pb
from tests.contract.conftest import STORES, backend_config, drop_keyspaces

T0 = 1_800_000_000_000
MIN = 60_000


@dataclass
class RecordingBus:
    """Enough of a Bus for the clock: remembers what it publishes."""

    events: list[pb.Event] = field(default_factory=list)

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        for m in messages:
            self.events.extend(pb.EventBatch.FromString(m.value).events)

    def missing(self) -> list[str]:
        return [
            e.device
            for e in self.events
            if e.HasField("state_change") and e.state_change.current == "missing"
        ]

    def alerts(self) -> list[tuple[str, str]]:
        return [(e.device, e.alert.rule) for e in self.events if e.HasField("alert")]


@dataclass
class Clock:
    now: int = T0

    def __call__(self) -> int:
        return self.now


@dataclass
class Replica:
    stage: DeviceStateStage
    book: RuleBook
    bus: RecordingBus


@dataclass
class Env:
    store: DeviceStateStore
    registry: Registry
    clock: Clock
    tenants: TenantSettingsRegistry = field(
        default_factory=lambda: TenantSettingsRegistry([TenantConfig(token="default")])
    )
    replicas: list[Replica] = field(default_factory=list)

    def replica(self, *, refresh_s: float = 30.0) -> Replica:
        """A state stage with a rule book of its own over the same store (another process)."""
        bus = RecordingBus()
        book = RuleBook(self.store, refresh_s=refresh_s)
        stage = DeviceStateStage(
            cast(Bus, bus), self.store, self.registry, book, tenant_settings=self.tenants, clock=self.clock
        )
        r = Replica(stage, book, bus)
        self.replicas.append(r)
        return r


@pytest.fixture(params=STORES)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    config = backend_config(request, request.param, tmp_path / "cloud")
    store = storage_backend(config).state()
    registry = storage_backend(config).registry()
    await store.start()
    await registry.start()
    yield Env(store, registry, Clock())
    await registry.stop()
    await store.stop()
    if request.param == "cassandra":
        await drop_keyspaces(request.getfixturevalue("cassandra"), config.store.keyspace_prefix)


def silent(device: str, device_type: str, since_ms: int) -> DeviceState:
    return DeviceState(
        device,
        device_type=device_type,
        last_event_ms=since_ms,
        last_received_ms=since_ms,
        presence_ms=since_ms,
    )


async def test_a_cut_interval_reaches_devices_that_are_already_silent(env: Env) -> None:
    # Two pumps and a thermometer, silent for 3 minutes under the 300 s default.
    await env.store.apply(
        "default",
        [
            silent("pump-1", "pump", T0 - 3 * MIN),
            silent("pump-2", "pump", T0 - 3 * MIN + 1),
            silent("th-1", "thermo", T0 - 3 * MIN),
        ],
    )
    here, there = env.replica(), env.replica(refresh_s=0.0)
    for r in (here, there):
        assert await r.stage.tick() == 0  # first tick: the stored states are scheduled; none due

    # Cut the pumps' interval to 5 s where the change is made (the REST API's path) ...
    await RuleService(env.store, here.book).set_presence_intervals("default", {"pump": 5})
    env.clock.now += 1_000
    await here.stage.tick()
    assert sorted(here.bus.missing()) == ["pump-1", "pump-2"]  # not at T0 + 2 min, at the next tick

    # ... and in a replica that only learns of it from the store (or ZooKeeper) later.
    await there.stage.tick()
    assert sorted(there.bus.missing()) == ["pump-1", "pump-2"]
    assert here.stage.stats.schedule_rebuilds == 2 and there.stage.stats.schedule_rebuilds == 2

    # The thermometer keeps the tenant's 300 s: missing at T0 + 2 min, not before.
    env.clock.now = T0 + 2 * MIN - 1
    await here.stage.tick()
    assert "th-1" not in here.bus.missing()
    env.clock.now = T0 + 2 * MIN
    await here.stage.tick()
    assert "th-1" in here.bus.missing()


async def test_a_lengthened_interval_does_not_report_a_device_early(env: Env) -> None:
    await env.store.apply("default", [silent("pump-1", "pump", T0 - 10_000)])
    r = env.replica()
    await RuleService(env.store, r.book).set_presence_intervals("default", {"pump": 20})
    await r.stage.tick()
    await RuleService(env.store, r.book).set_presence_intervals("default", {"pump": 600})
    env.clock.now = T0 + 10_000  # the old 20 s have passed, the new 600 s have not
    await r.stage.tick()
    assert r.bus.missing() == []
    env.clock.now = T0 - 10_000 + 600_000
    await r.stage.tick()
    assert r.bus.missing() == ["pump-1"]


async def test_a_shorter_missing_data_window_applies_at_once(env: Env) -> None:
    """The same class of defect for ``missing_data`` rules: their due times are scheduled too."""
    rule = {"id": "no-flow", "kind": "missing_data", "measurement": "flow", "after_s": 3600}
    state = DeviceState(
        "pump-1",
        device_type="pump",
        last_event_ms=T0,
        last_received_ms=T0,
        rules={"no-flow": RuleState(updated_ms=T0 - 3 * MIN, seen_ms=T0 - 3 * MIN)},
    )
    await env.store.apply("default", [state])
    r = env.replica()
    service = RuleService(env.store, r.book)
    await service.create("default", RULE_ADAPTER.validate_python(rule))
    await r.stage.tick()
    assert r.bus.alerts() == []
    await service.replace("default", RULE_ADAPTER.validate_python(rule | {"after_s": 60}))
    env.clock.now += 1_000
    await r.stage.tick()
    assert r.bus.alerts() == [("pump-1", "no-flow")]
