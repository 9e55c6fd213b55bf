"""Test infrastructure for the connectors stage: the real stage on the real embedded bus, SQLite
registry and connector store in tmp_path; events published to [persisted] the way the
persistence stage does (one EventBatch record per device), and an MQTT subscriber (paho)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.bus import PERSISTED, Bus, topic_name
from fieldgate.cloud.bus.embedded import EmbeddedBus
from fieldgate.cloud.config import ConnectorsConfig
from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.domain.connectors.targets import TargetPolicy
from fieldgate.cloud.ids import event_id
from fieldgate.cloud.pipeline.connectors.stage import GROUP, ConnectorStage, ConnectorStageSettings
from fieldgate.cloud.pipeline.stage import messages_by_device
from fieldgate.cloud.store.site import SiteStore
from fieldgate.cloud.store.sqlite.connectors import SqliteConnectorStore
from fieldgate.cloud.store.sqlite.registry import SqliteRegistry
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model

TENANT = "default"
SECRET = "connector-secret-0123456789"
FAST = ConnectorStageSettings(refresh_s=0.2, poll_timeout_s=0.1)
#: The operator setting the tests need: their receivers listen on 127.0.0.1, which connectors
#: may not reach by default (cloud/domain/connectors/targets.py).
LOOPBACK_ALLOWED = ConnectorsConfig(refresh_s=0.2, allow_networks=("127.0.0.0/8",))
#: The stage's policy from that setting.
LOOPBACK_TARGETS = TargetPolicy.from_networks(LOOPBACK_ALLOWED.allow_networks)


def connectors_committed(app: CloudApp, tenant: str = TENANT) -> bool:
    """The connectors' consumer group committed all of the tenant's [persisted] topic."""
    assert isinstance(app.parts.bus, EmbeddedBus)
    topic = topic_name(tenant, PERSISTED)
    return app.parts.bus.committed_offset(GROUP, topic) == app.parts.bus.end_offsets(PERSISTED).get(topic, 0)


def make_event(i: int, device: str = "dev-1", kind: str = "measurement", tenant: str = TENANT) -> pb.Event:
    alt = f"alt-{i}"
    ev = pb.Event(
        id=event_id(tenant, device, alt),
        alternate_id=alt,
        tenant=tenant,
        device=device,
        event_time_ms=now_ms(),
        received_time_ms=now_ms(),
    )
    if kind == "measurement":
        ev.measurement.values["n"] = float(i)
    elif kind == "alert":
        ev.alert.alert_type = "hot"
        ev.alert.message = f"alert {i}"
    elif kind == "location":
        ev.location.latitude = 1.0
    return ev


async def publish(
    bus: Bus, events: Sequence[pb.Event], tenant: str = TENANT, prefix: str = "fieldgate"
) -> None:
    await bus.publish(topic_name(tenant, PERSISTED, prefix), messages_by_device(events))


def webhook(cid: str, url: str, **delivery: Any) -> ConnectorSpec:
    d = {"max_attempts": 50, "initial_backoff_s": 0.05, "max_backoff_s": 0.3, "timeout_s": 0.5, **delivery}
    return ConnectorSpec.model_validate(
        {"id": cid, "kind": "webhook", "webhook": {"url": url, "secret": SECRET}, "delivery": d}
    )


@dataclass
class StageRig:
    bus: EmbeddedBus
    registry: SqliteRegistry
    store: SqliteConnectorStore
    stage: ConnectorStage

    def committed(self, tenant: str = TENANT) -> int | None:
        return self.bus.committed_offset(GROUP, topic_name(tenant, PERSISTED))

    def end(self) -> int:
        return self.bus.end_offsets(PERSISTED).get(topic_name(TENANT, PERSISTED), 0)


@asynccontextmanager
async def stage_rig(
    tmp_path: Path,
    connectors: Sequence[ConnectorSpec],
    settings: ConnectorStageSettings = FAST,
    site: SiteStore | None = None,
    targets: TargetPolicy = LOOPBACK_TARGETS,
) -> AsyncIterator[StageRig]:
    bus = EmbeddedBus(tmp_path / "bus.db")
    registry = SqliteRegistry(tmp_path / "registry")
    store = SqliteConnectorStore(tmp_path / "connectors")
    for part in (bus, registry, store):
        await part.start()
    await registry.ensure_tenant(model.Tenant(token=TENANT, name=TENANT))
    for spec in connectors:
        await store.create(TENANT, spec)
    stage = ConnectorStage(bus, store, registry, settings=settings, site=site, targets=targets)
    await stage.start()
    try:
        yield StageRig(bus, registry, store, stage)
    finally:
        await stage.stop()
        for part in (store, registry, bus):
            await part.stop()


class MqttSubscriber:
    """A paho client subscribed to ``topic``; messages land in ``received`` (topic, document)."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="connector-test-sub")
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("mqtt subscriber did not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((msg.topic, orjson.loads(msg.payload)))

    def ids(self) -> list[str]:
        with self._lock:
            return [doc["id"] for _t, doc in self.received]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
