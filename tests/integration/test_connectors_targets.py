"""Connectors cannot be aimed inside (cloud/domain/connectors/targets.py), through the whole cloud and
through the stage against real receivers on 127.0.0.1:

* by default a target that resolves to a loopback, link-local, private, unique-local,
  multicast or unspecified address is a 422 naming the field — in any spelling;
* the operator's ``connectors.allow_networks`` opens exactly the networks it names;
* a name that resolved outside at creation and resolves inside later is refused at connect
  time (nothing reaches the receiver), and the webhook connects to the address it checked;
* a dead letter's reason is a status line, never the receiver's body; redirects are not
  followed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.config import CloudConfig, ConnectorsConfig
from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.domain.connectors.targets import IPAddress, TargetPolicy
from fieldgate.cloud.services.connectors import ConnectorAdmin
from fieldgate.cloud.store.connectors import DeadLetter
from tests.helpers.connectors import (
    LOOPBACK_TARGETS,
    SECRET,
    TENANT,
    StageRig,
    make_event,
    publish,
    stage_rig,
)
from tests.helpers.waiting import eventually
from tests.helpers.webhook_receiver import SECRET_BODY, webhook_receiver

pytestmark = pytest.mark.integration

PASSWORD = "connectors-test-pw"
FAST_DELIVERY = {"max_attempts": 2, "initial_backoff_s": 0.05, "max_backoff_s": 0.1, "timeout_s": 2}


@asynccontextmanager
async def cloud(tmp_path: Path, allow: tuple[str, ...] = ()) -> AsyncIterator[httpx.AsyncClient]:
    config = CloudConfig(
        data_dir=tmp_path,
        rest_port=0,
        grpc_port=0,
        connectors=ConnectorsConfig(refresh_s=0.2, allow_networks=allow),
    )
    app = CloudApp(config)
    await app.start()
    try:
        await app.ensure_admin(PASSWORD)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.rest_port}", timeout=30) as client:
            r = await client.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
            assert r.status_code == 200, r.text
            client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
            yield client
    finally:
        await app.stop()


def hook(url: str, cid: str = "hook") -> dict[str, Any]:
    return {"id": cid, "kind": "webhook", "webhook": {"url": url}}


#: Inside addresses in the spellings people use to get around a text check.
INSIDE_URLS = [
    "http://127.0.0.1:9/h",
    "http://127.1:9/h",
    "http://2130706433:9/h",
    "http://0x7f.1/h",
    "http://0177.0.0.1/h",
    "http://[::1]:9/h",
    "http://[::ffff:127.0.0.1]/h",
    "http://[::127.0.0.1]/h",
    "http://[64:ff9b::7f00:1]/h",  # NAT64 of 127.0.0.1
    "http://[2002:7f00:1::1]/h",  # 6to4 of 127.0.0.1
    "http://0.0.0.0/h",
    "http://[::]/h",
    "http://localhost:9/h",
    "http://LOCALHOST./h",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/h",
    "http://172.16.0.1/h",
    "http://192.168.1.1/h",
    "http://100.64.0.1/h",
    "http://[fd00::1]/h",
    "http://[fe80::1]/h",
    "http://224.0.0.1/h",
    "http://[ff02::1]/h",
]


async def test_inside_targets_are_refused_at_creation_in_any_spelling(tmp_path: Path) -> None:
    async with cloud(tmp_path) as api:
        for url in INSIDE_URLS:
            r = await api.post("/api/v1/connectors", json=hook(url))
            assert r.status_code == 422, (url, r.text)
            detail = r.json()["detail"]
            assert "webhook.url" in detail and "target refused" in detail, (url, detail)
            # (a trailing-dot name may not resolve at all here: refused too)
            assert "connectors.allow_networks" in detail or "does not resolve" in detail, detail
        # The other kinds' targets too.
        mqtt = {"id": "m", "kind": "mqtt", "mqtt": {"host": "localhost", "port": 1883}}
        r = await api.post("/api/v1/connectors", json=mqtt)
        assert r.status_code == 422 and "mqtt.host" in r.json()["detail"], r.text
        kafka = {
            "id": "k",
            "kind": "kafka",
            "kafka": {"bootstrap": "8.8.8.8:9092,127.0.0.1:9092", "topic": "t"},
        }
        r = await api.post("/api/v1/connectors", json=kafka)
        assert r.status_code == 422 and "kafka.bootstrap" in r.json()["detail"], r.text
        assert (await api.get("/api/v1/connectors")).json()["total"] == 0
        # A public address is fine (nothing is sent: no events).
        assert (await api.post("/api/v1/connectors", json=hook("http://8.8.8.8/h"))).status_code == 201
        # ... and a PUT that aims it inside is refused, leaving it as it was.
        r = await api.put("/api/v1/connectors/hook", json=hook("http://127.1:9/h"))
        assert r.status_code == 422 and "webhook.url" in r.json()["detail"], r.text
        got = (await api.get("/api/v1/connectors/hook")).json()
        assert got["webhook"]["url"] == "http://8.8.8.8/h"


async def test_the_operator_allows_named_networks_only(tmp_path: Path) -> None:
    async with cloud(tmp_path, allow=("127.0.0.0/8",)) as api:
        for i, url in enumerate(["http://127.1:9/h", "http://2130706433:9/h", "http://[::ffff:127.0.0.1]/h"]):
            r = await api.post("/api/v1/connectors", json=hook(url, f"ok-{i}"))
            assert r.status_code == 201, (url, r.text)
        for url in ["http://[::1]:9/h", "http://10.0.0.1/h", "http://169.254.169.254/"]:
            r = await api.post("/api/v1/connectors", json=hook(url, "no"))
            assert r.status_code == 422, (url, r.text)


def test_allow_networks_is_validated_at_load() -> None:
    with pytest.raises(ValueError, match=r"connectors\.allow_networks"):
        CloudConfig.model_validate({"connectors": {"allow_networks": ["10.0.0.1/8"]}})
    with pytest.raises(ValueError, match=r"connectors\.allow_networks"):
        CloudConfig.model_validate({"connectors": {"allow_networks": ["localhost"]}})


class FlippingResolver:
    """A name that resolves to what the test says, now (DNS rebinding, played)."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = dict(names)
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        return [ipaddress.ip_address(self.names[host])] if host in self.names else []


async def _letters(rig: StageRig, cid: str, n: int) -> list[DeadLetter] | None:
    letters = await rig.store.list_dead_letters(TENANT, cid)
    return letters if len(letters) >= n else None


async def test_a_name_that_resolves_inside_later_is_refused_at_connect_time(tmp_path: Path) -> None:
    async with webhook_receiver(secret=SECRET) as rx:
        resolver = FlippingResolver({"hooks.example": "93.184.215.14"})
        policy = TargetPolicy(resolve=resolver)  # the default: nothing inside allowed
        spec = ConnectorSpec.model_validate(
            {
                "id": "hook",
                "kind": "webhook",
                "webhook": {"url": f"http://hooks.example:{rx.port}/hook", "secret": SECRET},
                "delivery": FAST_DELIVERY,
            }
        )
        async with stage_rig(tmp_path, [], targets=policy) as rig:
            admin = ConnectorAdmin(rig.store, rig.bus, policy)
            await admin.create(TENANT, spec)  # public at creation
            resolver.names["hooks.example"] = "127.0.0.1"  # ... and inside now, where rx listens
            await eventually(lambda: rig.stage.runner(TENANT, "hook") is not None, what="the stage runs it")
            await publish(rig.bus, [make_event(1)])
            letters = await eventually(lambda: _letters(rig, "hook", 1), what="dead letter")
        assert letters[0].reason.startswith("target refused: hooks.example → 127.0.0.1 is a loopback address")
        assert letters[0].attempts == 1  # permanent: not retried
        assert rx.requests == 0  # nothing reached the inside
        assert resolver.calls.count("hooks.example") >= 2  # at creation, and at connect


async def test_the_webhook_connects_to_the_address_it_checked(tmp_path: Path) -> None:
    """A name only our resolver knows: delivered, so the connection went to the checked
    address (the system's resolver, which the client library would use, cannot resolve it)."""
    async with webhook_receiver(secret=SECRET) as rx:
        resolver = FlippingResolver({"receiver.invalid": "127.0.0.1"})
        policy = TargetPolicy(allow=LOOPBACK_TARGETS.allow, resolve=resolver)
        spec = ConnectorSpec.model_validate(
            {
                "id": "hook",
                "kind": "webhook",
                "webhook": {"url": f"http://receiver.invalid:{rx.port}/hook", "secret": SECRET},
                "delivery": FAST_DELIVERY,
            }
        )
        async with stage_rig(tmp_path, [spec], targets=policy) as rig:
            events = [make_event(i) for i in range(3)]
            await publish(rig.bus, events)
            await eventually(lambda: set(rx.event_ids()) == {e.id for e in events}, what="delivery")
        assert rx.bad_signatures == 0


async def test_an_mqtt_target_that_resolves_inside_is_never_contacted(tmp_path: Path) -> None:
    resolver = FlippingResolver({"broker.invalid": "127.0.0.1"})
    spec = ConnectorSpec.model_validate(
        {
            "id": "broker",
            "kind": "mqtt",
            "mqtt": {"host": "broker.invalid", "port": 1, "topic": "out/{device}"},
            "delivery": FAST_DELIVERY,
        }
    )
    async with stage_rig(tmp_path, [spec], targets=TargetPolicy(resolve=resolver)) as rig:
        await publish(rig.bus, [make_event(1)])
        letters = await eventually(lambda: _letters(rig, "broker", 1), what="dead letter", timeout=20)
    assert "target refused: broker.invalid → 127.0.0.1 is a loopback address" in letters[0].reason


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("500", "HTTP 500 Internal Server Error"),
        ("400", "HTTP 400 Bad Request"),
        ("redirect", "HTTP 302 Found (redirects are not followed)"),
    ],
)
async def test_a_dead_letter_says_the_status_line_not_the_body(
    tmp_path: Path, mode: str, reason: str
) -> None:
    async with webhook_receiver(secret=SECRET) as rx:
        rx.mode = mode
        spec = ConnectorSpec.model_validate(
            {
                "id": "hook",
                "kind": "webhook",
                "webhook": {"url": rx.url, "secret": SECRET},
                "delivery": FAST_DELIVERY,
            }
        )
        async with stage_rig(tmp_path, [spec]) as rig:
            await publish(rig.bus, [make_event(1)])
            letters = await eventually(lambda: _letters(rig, "hook", 1), what="dead letter")
        assert letters[0].reason == reason
        assert SECRET_BODY not in letters[0].reason
        assert rx.accepted == []  # a redirect to the receiver itself was not followed
