"""The device state store's contract on SQLite and Cassandra (the latter marked distributed):
merge is order-tolerant and idempotent, presence listing and paging, rules rows, tenants apart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldgate.cloud.domain.rules.engine import RuleState
from fieldgate.cloud.store.backend import storage_backend
from fieldgate.cloud.store.state import (
    AlertValue,
    DeviceState,
    DeviceStateStore,
    LocationValue,
    MeasurementValue,
)
from tests.contract.conftest import STORES, backend_config, drop_keyspaces


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DeviceStateStore]:
    config = backend_config(request, request.param, tmp_path / "cloud")
    s = storage_backend(config).state()
    await s.start()
    yield s
    await s.stop()
    if request.param == "cassandra":
        await drop_keyspaces(request.getfixturevalue("cassandra"), config.store.keyspace_prefix)


NEW = DeviceState(
    "d1",
    device_type="thermo",
    assignment="a2",
    assignment_ms=200,
    last_event_ms=200,
    last_received_ms=210,
    location=LocationValue(200, 52.0, 13.0),
    measurements={"t": MeasurementValue(200, 2.0)},
    last_alert=AlertValue(200, "hot", "critical", "too hot", "system", "raised", "hot", "e2"),
    rules={"hot": RuleState(updated_ms=200, raised=True)},
)
OLD = DeviceState(
    "d1",
    assignment="a1",
    assignment_ms=100,
    last_event_ms=100,
    last_received_ms=110,
    location=LocationValue(100, 1.0, 1.0),
    measurements={"t": MeasurementValue(100, 1.0), "h": MeasurementValue(100, 50.0)},
    last_alert=AlertValue(100, "cold", "info", "cold"),
    rules={"hot": RuleState(updated_ms=100, raised=False), "other": RuleState(updated_ms=100)},
)


async def test_older_never_overwrites_newer_and_apply_is_idempotent(store: DeviceStateStore) -> None:
    await store.apply("default", [NEW])
    (after_old,) = await store.apply("default", [OLD])
    assert (
        after_old.assignment == "a2" and after_old.last_event_ms == 200 and after_old.last_received_ms == 210
    )
    assert after_old.location == NEW.location and after_old.last_alert == NEW.last_alert
    assert after_old.measurements == {"t": MeasurementValue(200, 2.0), "h": MeasurementValue(100, 50.0)}
    assert after_old.rules["hot"].raised and "other" in after_old.rules
    assert after_old.device_type == "thermo"
    (again,) = await store.apply("default", [OLD])
    assert again == after_old
    assert (await store.get_states("default", ["d1", "nobody"])) == {"d1": after_old}
    # The same in the other order ends in the same state.
    # The same observations in the other order end in the same state (device d2).
    await store.apply(
        "default", [DeviceState(**{f: getattr(OLD, f) for f in OLD.__slots__} | {"device": "d2"})]
    )
    (d2,) = await store.apply(
        "default", [DeviceState(**{f: getattr(NEW, f) for f in NEW.__slots__} | {"device": "d2"})]
    )
    assert DeviceState(**{f: getattr(d2, f) for f in d2.__slots__} | {"device": "d1"}) == after_old


async def test_presence_listing_pages_and_moves(store: DeviceStateStore) -> None:
    states = [DeviceState(f"dev-{i:02d}", presence="missing" if i % 3 == 0 else "present") for i in range(10)]
    await store.apply("default", states)
    missing = await store.list_states("default", presence="missing")
    assert [s.device for s in missing.items] == [
        "dev-00",
        "dev-03",
        "dev-06",
        "dev-09",
    ] and missing.total == 4
    page2 = await store.list_states("default", page=2, page_size=4)
    assert [s.device for s in page2.items] == ["dev-04", "dev-05", "dev-06", "dev-07"] and page2.total == 10
    # dev-03 comes back (a newer presence change): it moves between the listings.
    await store.apply("default", [DeviceState("dev-03", presence="present", presence_ms=5)])
    assert (await store.list_states("default", presence="missing")).total == 3
    assert "dev-03" in [s.device for s in (await store.list_states("default", presence="present")).items]
    # An older presence change does not move it back.
    await store.apply("default", [DeviceState("dev-03", presence="missing", presence_ms=1)])
    assert (await store.list_states("default", presence="missing")).total == 3


async def test_a_deleted_devices_state_goes(store: DeviceStateStore) -> None:
    await store.apply("default", [DeviceState("gone", presence="missing"), DeviceState("kept")])
    assert await store.delete_state("default", "gone")
    assert not await store.delete_state("default", "gone")
    assert not await store.delete_state("nobody", "gone")
    assert await store.get_states("default", ["gone", "kept"]) == {"kept": DeviceState("kept")}
    every = await store.list_states("default")
    assert [s.device for s in every.items] == ["kept"] and every.total == 1
    assert (await store.list_states("default", presence="missing")).total == 0


async def test_rules_rows_and_tenants_apart(store: DeviceStateStore) -> None:
    assert await store.get_rules("default") == {}
    await store.put_rule("default", "a", '{"id": "a"}')
    await store.put_rule("default", "b", '{"id": "b"}')
    await store.put_rule("default", "a", '{"id": "a", "v": 2}')
    assert await store.get_rules("default") == {"a": '{"id": "a", "v": 2}', "b": '{"id": "b"}'}
    assert await store.delete_rule("default", "b") and not await store.delete_rule("default", "b")
    await store.replace_rules("default", {"c": "{}", "_presence_intervals": '{"x": 5}'})
    assert await store.get_rules("default") == {"c": "{}", "_presence_intervals": '{"x": 5}'}
    await store.apply("default", [NEW])
    assert await store.get_rules("beta") == {} and await store.get_states("beta", ["d1"]) == {}
    assert (await store.list_states("beta")).total == 0
