"""Tenant configuration in a real ZooKeeper: publish, load, live changes, invalid data.

Each test uses its own instance name, so the session's shared server keeps them apart. Raw
writes (what an operator does with zkCli or kazoo) go through a second, plain KazooClient.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

from fieldgate.cloud.config import BusConfig, CloudConfig, TenantConfig
from fieldgate.cloud.zk.models import (
    InstanceSettings,
    PipelineSettings,
    TenantSettings,
    TenantSettingsRegistry,
)
from fieldgate.cloud.zk.source import ZkConfigSource
from tests.helpers.waiting import eventually, never

pytestmark = pytest.mark.distributed

WAIT_S = 30.0


@pytest.fixture
def instance() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def source(zookeeper: Any, instance: str) -> AsyncIterator[ZkConfigSource]:
    s = ZkConfigSource(zookeeper.hosts, instance)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def operator(zookeeper: Any) -> Iterator[KazooClient]:
    """A separate ZooKeeper session, as an operator's zkCli/kazoo shell would be."""
    client = KazooClient(hosts=zookeeper.hosts, timeout=10.0)
    client.start(10.0)
    yield client
    client.stop()
    client.close()


class Seen:
    """Collects watch callbacks (runs on the test's loop)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, TenantSettings]] = []

    def __call__(self, tenant: str, settings: TenantSettings) -> None:
        self.calls.append((tenant, settings))


def settings(token: str, **kw: Any) -> TenantSettings:
    return TenantSettings(token=token, name=f"Tenant {token}", **kw)


async def test_publish_and_load_round_trip(source: ZkConfigSource) -> None:
    a = settings("acme", auto_register=False, retention_days=30, decoders=("json",))
    b = settings("globex", pipeline=PipelineSettings(max_batch_events=50))
    inst = InstanceSettings(bus=BusConfig(topic_prefix="plant7"), default_command_ttl_s=60)
    await source.publish_instance(inst)
    await source.publish_tenant("acme", a)
    await source.publish_tenant("globex", b)
    # A file TenantConfig can be published as is.
    await source.publish_tenant("initech", TenantConfig(token="initech", auto_register=False))

    loaded = await source.load()
    assert loaded.instance == inst
    assert dict(loaded.tenants) == {
        "acme": a,
        "globex": b,
        "initech": TenantSettings(token="initech", auto_register=False),
    }
    assert loaded.tenants["acme"].ttl_s == 30 * 86_400

    # The same typed models as the file configuration: merged into a CloudConfig.
    merged = loaded.apply_to(CloudConfig())
    assert merged.bus.topic_prefix == "plant7" and merged.default_command_ttl_s == 60
    by_token = {t.token: t for t in merged.tenants}
    assert by_token["acme"].auto_register is False and "default" in by_token


async def test_a_tenant_change_reaches_the_watcher_and_leaves_other_tenants_alone(
    source: ZkConfigSource, operator: KazooClient
) -> None:
    await source.publish_tenant("acme", settings("acme"))
    await source.publish_tenant("globex", settings("globex", retention_days=7))
    await source.load()
    registry = TenantSettingsRegistry(source.current().tenants.values())
    seen = Seen()

    def on_change(tenant: str, s: TenantSettings) -> None:
        registry.update(tenant, s)
        seen(tenant, s)

    await source.watch_tenants(on_change)
    globex_before = registry.get("globex")

    # The operator flips acme's registration policy by writing the znode directly.
    operator.set(
        source.tenant_path("acme"),
        b'{"name": "Tenant acme", "auto_register": false, "default_device_type": "sensor"}',
    )
    await eventually(lambda: bool(seen.calls), WAIT_S, "acme's change reaches the watcher")
    tenant, new = seen.calls[-1]
    assert tenant == "acme" and new.auto_register is False and new.default_device_type == "sensor"
    current_acme = registry.get("acme")
    assert current_acme is not None and current_acme.auto_register is False
    assert registry.get("globex") == globex_before
    assert source.current().tenants["globex"].retention_days == 7
    # globex's first read (equal to what load() saw) was handled before acme's change arrived.
    assert {t for t, _ in seen.calls} == {"acme"}
    await never(lambda: {t for t, _ in seen.calls} - {"acme"}, within=0.5, what="a call for another tenant")


async def test_invalid_data_is_rejected_and_the_previous_configuration_stays(
    source: ZkConfigSource, operator: KazooClient, caplog: pytest.LogCaptureFixture
) -> None:
    good = settings("acme", auto_register=True, retention_days=3)
    await source.publish_tenant("acme", good)
    await source.load()
    seen = Seen()
    await source.watch_tenants(seen)
    path = source.tenant_path("acme")

    with caplog.at_level(logging.ERROR, logger="fieldgate.cloud.zk.source"):
        operator.set(path, b"{not json")
        await eventually(lambda: source.stats.rejected >= 1, WAIT_S, "bad JSON is rejected")
        operator.set(path, b'{"auto_register": "sometimes", "retention_days": -1}')
        await eventually(lambda: source.stats.rejected >= 2, WAIT_S, "wrong types are rejected")
        operator.set(path, b'{"auto_register": true, "colour": "blue"}')
        await eventually(lambda: source.stats.rejected >= 3, WAIT_S, "an unknown key is rejected")

    assert seen.calls == []
    assert source.current().tenants["acme"] == good
    assert "colour" in source.last_rejection[path]  # the latest reason, for operators
    assert (await source.load()).tenants["acme"] == good
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "not valid JSON" in messages and "retention_days" in messages and "colour" in messages

    # A valid version afterwards is applied again.
    operator.set(path, b'{"auto_register": false}')
    await eventually(lambda: bool(seen.calls), WAIT_S, "the next valid version is applied")
    assert seen.calls[-1][1].auto_register is False
    assert path not in source.last_rejection


async def test_a_new_tenant_appears(source: ZkConfigSource, operator: KazooClient) -> None:
    await source.publish_tenant("acme", settings("acme"))
    await source.load()
    seen = Seen()
    await source.watch_tenants(seen)
    operator.create(source.tenant_path("newco"), b'{"auto_register": false, "retention_days": 90}')
    await eventually(lambda: any(t == "newco" for t, _ in seen.calls), WAIT_S, "newco appears")
    # acme's first read reached the loop before newco's and equals what load() saw: no call.
    assert [t for t, _ in seen.calls] == ["newco"]
    (new,) = [s for t, s in seen.calls if t == "newco"]
    assert new == TenantSettings(token="newco", auto_register=False, retention_days=90)
    assert "newco" in source.current().tenants

    # A second source (another service) sees the same tenants at load.
    other = ZkConfigSource(source.hosts, source.instance)
    await other.start()
    try:
        assert set((await other.load()).tenants) == {"acme", "newco"}
    finally:
        await other.stop()


async def test_a_deleted_and_recreated_tenant_is_watched_again(
    source: ZkConfigSource, operator: KazooClient
) -> None:
    await source.publish_tenant("acme", settings("acme"))
    seen = Seen()
    await source.watch_tenants(seen)
    await eventually(lambda: len(seen.calls) == 1, WAIT_S, "acme's first version (no load before)")
    await source.delete_tenant("acme")
    await eventually(lambda: "acme" not in source.current().tenants, WAIT_S, "the deletion is noticed")
    operator.create(source.tenant_path("acme"), b'{"auto_register": false}')
    await eventually(lambda: len(seen.calls) == 2, WAIT_S, "the re-created tenant is seen")
    assert seen.calls[-1][1].auto_register is False


async def test_instance_created_once_and_watched(source: ZkConfigSource, operator: KazooClient) -> None:
    await source.load()
    assert not source.instance_exists and not source.instance_valid
    first = InstanceSettings(default_command_ttl_s=60)
    assert await source.create_instance(first) is True
    # A second service starting at the same time does not overwrite it.
    other = ZkConfigSource(source.hosts, source.instance)
    await other.start()
    try:
        assert await other.create_instance(InstanceSettings(default_command_ttl_s=99)) is False
        assert (await other.load()).instance == first
    finally:
        await other.stop()

    changes: list[InstanceSettings] = []
    await source.watch_instance(changes.append)
    operator.set(source.instance_path, b'{"token_ttl_s": 5}')  # below the minimum of 60
    await eventually(lambda: source.stats.rejected >= 1, WAIT_S, "the invalid instance is rejected")
    assert "token_ttl_s" in source.last_rejection[source.instance_path]
    assert changes == [] and source.current().instance == first
    operator.set(source.instance_path, b'{"default_command_ttl_s": 120}')
    await eventually(lambda: bool(changes), WAIT_S, "the valid instance change reaches the callback")
    assert changes == [InstanceSettings(default_command_ttl_s=120)]


def _cli(*args: str) -> tuple[int, str, str]:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "fieldgate.cli", *args], capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout, done.stderr


async def test_the_tenant_cli_validates_before_writing(zookeeper: Any, instance: str, tmp_path: Any) -> None:
    """`fieldgate cloud tenant set` refuses invalid settings (nothing written) and writes valid
    ones that `show` and a ZkConfigSource then read back."""
    import yaml

    conf = tmp_path / "cloud.yaml"
    conf.write_text(yaml.safe_dump({"zookeeper": {"hosts": zookeeper.hosts, "instance": instance}}))
    rc, _, err = await asyncio.to_thread(
        _cli, "cloud", "tenant", "set", "--config", str(conf), "acme", '{"auto_register": "maybe"}'
    )
    assert rc == 2 and "auto_register" in err
    rc, _, err = await asyncio.to_thread(
        _cli, "cloud", "tenant", "set", "--config", str(conf), "acme", "{nope"
    )
    assert rc == 2 and "not valid JSON" in err
    rc, out, _ = await asyncio.to_thread(_cli, "cloud", "tenant", "show", "--config", str(conf), "acme")
    assert rc == 1 and "no znode" in out  # nothing was written

    rc, out, err = await asyncio.to_thread(
        _cli,
        "cloud",
        "tenant",
        "set",
        "--config",
        str(conf),
        "acme",
        '{"auto_register": false, "retention_days": 7}',
    )
    assert rc == 0, err
    rc, out, _ = await asyncio.to_thread(_cli, "cloud", "tenant", "show", "--config", str(conf))
    assert rc == 0 and out.startswith("acme: ") and '"retention_days": 7' in out
    async with ZkConfigSource(zookeeper.hosts, instance) as zk:
        settings = (await zk.load()).tenants["acme"]
    assert settings.auto_register is False and settings.ttl_s == 7 * 86_400
