from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fieldgate.suite import Suite, SuiteOptions
from tests.helpers.backends import backends_for
from tests.helpers.mosquitto import start_mosquitto

PASSWORD = "e2e-secret-pw"


@pytest.fixture(params=["embedded", "mosquitto", pytest.param("distributed", marks=pytest.mark.distributed)])
async def suite(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Suite]:
    """The whole suite three times: with the embedded amqtt broker; with Mosquitto (Debian's)
    as the external broker the edge agent subscribes to; and with the cloud on the distributed
    backends (Kafka bus, Cassandra event store, ZooKeeper tenant settings: real servers)."""
    if request.param in ("embedded", "distributed"):
        b = backends_for(request, request.param)
        opts = SuiteOptions(
            data_dir=tmp_path / "fg", admin_password=PASSWORD, bus=b.bus, store=b.store, zookeeper=b.zookeeper
        )
        async with Suite(opts) as s:
            yield s
        return
    broker = start_mosquitto(tmp_path)
    try:
        opts = SuiteOptions(
            data_dir=tmp_path / "fg", admin_password=PASSWORD, mqtt_mode="external", mqtt_port=broker.port
        )
        async with Suite(opts) as s:
            yield s
    finally:
        broker.stop()


async def login(base_url: str, password: str = PASSWORD) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=base_url, timeout=10)
    r = await client.post("/api/v1/auth/token", data={"username": "admin", "password": password})
    r.raise_for_status()
    client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    return client


@pytest.fixture
async def api(suite: Suite) -> AsyncIterator[httpx.AsyncClient]:
    client = await login(suite.rest_url)
    yield client
    await client.aclose()
