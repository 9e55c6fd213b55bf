"""Rules changed through ZooKeeper apply live (distributed backends: Kafka, Cassandra, ZooKeeper).

Two cloud processes' worth of apps share the servers: ``api`` (REST) and ``state`` (the stage)
run as separate CloudApps, so a rule posted on the api reaches the state stage only through
ZooKeeper (or the store's 30 s refresh, which the test does not wait for); a rule set written to
the znode directly applies too and is saved to the store; an invalid one is ignored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.bus import DECODED, Message, topic_name
from fieldgate.cloud.config import CloudConfig, TenantConfig
from fieldgate.cloud.domain.rules.model import RuleSet
from fieldgate.cloud.zk.rules import ZkRules
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from tests.contract.conftest import drop_keyspaces
from tests.helpers.backends import backends_for
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.distributed

PASSWORD = "zk-rules-pw"
T0 = 1_800_000_000_000


@pytest.fixture
async def apps(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[CloudApp, CloudApp]]:
    b = backends_for(request, "distributed")
    assert b.bus and b.store and b.zookeeper

    def config(name: str) -> CloudConfig:
        return CloudConfig(
            data_dir=tmp_path / name, rest_port=0, grpc_port=0, tenants=(TenantConfig(token="default"),),
            bus=b.bus, store=b.store, zookeeper=b.zookeeper,
        )  # fmt: skip

    everything_but_api = ["ingest", "inbound", "registration", "event-store", "state"]
    pipeline = CloudApp(config("pipeline"), everything_but_api)
    api = CloudApp(config("api"), ["api"])
    await pipeline.start()
    await api.start()
    await api.ensure_admin(PASSWORD)
    yield api, pipeline
    await api.stop()
    await pipeline.stop()
    await drop_keyspaces(request.getfixturevalue("cassandra"), b.store.keyspace_prefix)


async def send(app: CloudApp, device: str, alt: str, t: int, temp: float) -> None:
    ev = pb.Event(
        tenant="default", device=device, alternate_id=alt, event_time_ms=t, received_time_ms=now_ms()
    )
    ev.measurement.values["temp"] = temp
    data = pb.EventBatch(events=[ev]).SerializeToString()
    await app.parts.bus.publish(
        topic_name("default", DECODED, app.config.bus.topic_prefix), [Message(device.encode(), data)]
    )


async def alerts(client: httpx.AsyncClient, device: str) -> list[tuple[str, str]]:
    r = await client.get(f"/api/v1/devices/{device}/events", params={"type": "alert"})
    if r.status_code == 404:
        return []
    return [(e["alert_type"], e["metadata"]["alert_state"]) for e in reversed(r.json()["items"])]


async def test_rule_changes_reach_the_state_service_through_zookeeper(
    apps: tuple[CloudApp, CloudApp],
) -> None:
    api, pipeline = apps
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.rest_port}", timeout=20)
    r = await client.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
    client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    try:
        await send(pipeline, "z-1", "a0", T0, 10)

        async def registered() -> bool:
            return (await client.get("/api/v1/devices/z-1/state")).status_code == 200

        await eventually(registered, timeout=60, what="state of z-1")
        rule: dict[str, Any] = {
            "id": "hot",
            "kind": "threshold",
            "measurement": "temp",
            "operator": ">",
            "value": 30,
        }
        assert (await client.post("/api/v1/rules", json=rule)).status_code == 201

        async def installed() -> bool:
            rs = pipeline.parts.rule_book.cached("default")
            return rs is not None and rs.get("hot") is not None

        await eventually(installed, timeout=30, what="rule in the state process")
        await send(pipeline, "z-1", "a1", T0 + 1000, 31)
        assert await eventually(lambda: alerts(client, "z-1"), timeout=60, what="alert") == [
            ("hot", "raised")
        ]

        # Written to the znode directly: applied, and saved to the store (REST lists it).
        zk = ZkRules(api.config.zookeeper.hosts, api.config.zookeeper.instance)  # type: ignore[union-attr]
        await zk.start()
        try:
            direct = RuleSet.model_validate({"rules": [{**rule, "value": 100}]})
            await zk.publish("default", direct)

            async def saved() -> bool:
                items = (await client.get("/api/v1/rules")).json()["items"]
                return [x["value"] for x in items] == [100.0]

            await eventually(saved, timeout=30, what="direct ZooKeeper rule saved")

            async def applied() -> bool:
                return _value(pipeline) == 100.0

            await eventually(applied, timeout=30, what="applied in the stage")
            await send(pipeline, "z-1", "a2", T0 + 2000, 50)

            async def cleared() -> list[tuple[str, str]] | None:
                got = await alerts(client, "z-1")
                return got if len(got) >= 2 else None

            assert await eventually(cleared, timeout=60, what="cleared") == [
                ("hot", "raised"),
                ("hot", "cleared"),
            ]
            # An invalid version is ignored: the previous rules stay in force.
            client_zk: Any = zk._client
            client_zk.set(zk.tenant_path("default"), b'{"rules": [{"id": "x", "kind": "eval"}]}')

            async def rejected() -> bool:
                return _rejected(pipeline)

            await eventually(rejected, timeout=30, what="invalid version rejected")
            assert _value(pipeline) == 100.0
        finally:
            await zk.stop()
    finally:
        await client.aclose()


def _value(app: CloudApp) -> float | None:
    rs = app.parts.rule_book.cached("default")
    rule = rs.get("hot") if rs is not None else None
    return getattr(rule, "value", None)


def _rejected(app: CloudApp) -> bool:
    return app.parts.zk_rules is not None and app.parts.zk_rules.stats.rejected > 0
