"""Connectors through the whole cloud process (CloudApp, embedded bus, SQLite): REST CRUD with
write-only secrets, 422s that name the field, dead letters and re-drive over REST, and
``fieldgate cloud replay --stage persisted --group connectors`` re-sending a time range."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.cli import main
from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.bus import PERSISTED
from fieldgate.cloud.bus.embedded import EmbeddedBus
from fieldgate.cloud.config import CloudConfig
from fieldgate.timeutil import now_ms
from tests.helpers.connectors import (
    LOOPBACK_ALLOWED,
    SECRET,
    connectors_committed,
    make_event,
    publish,
)
from tests.helpers.waiting import collect, eventually, never
from tests.helpers.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.integration

PASSWORD = "connectors-test-pw"


def _config(tmp_path: Path) -> CloudConfig:
    return CloudConfig(data_dir=tmp_path, rest_port=0, grpc_port=0, connectors=LOOPBACK_ALLOWED)


@asynccontextmanager
async def cloud(tmp_path: Path) -> AsyncIterator[tuple[CloudApp, httpx.AsyncClient]]:
    app = CloudApp(_config(tmp_path))
    await app.start()
    try:
        await app.ensure_admin(PASSWORD)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.rest_port}", timeout=10) as client:
            r = await client.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
            assert r.status_code == 200, r.text
            client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
            yield app, client
    finally:
        await app.stop()


def hook(url: str, **delivery: Any) -> dict[str, Any]:
    return {
        "id": "hook",
        "kind": "webhook",
        "webhook": {"url": url, "secret": SECRET},
        "delivery": {"initial_backoff_s": 0.05, "max_backoff_s": 0.2, "timeout_s": 1, **delivery},
    }


async def test_crud_keeps_secrets_write_only(tmp_path: Path) -> None:
    async with cloud(tmp_path) as (_app, api):
        body = hook("http://127.0.0.1:9/hook")
        r = await api.post("/api/v1/connectors", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["webhook"] == {"url": "http://127.0.0.1:9/hook", "headers": {}, "secret_set": True}
        assert SECRET not in r.text
        assert (await api.post("/api/v1/connectors", json=body)).status_code == 409
        listed = (await api.get("/api/v1/connectors")).json()
        assert [c["id"] for c in listed["items"]] == ["hook"] and SECRET not in str(listed)
        # PUT without the secret keeps it; the change is visible.
        changed = {**body, "webhook": {"url": "http://127.0.0.1:9/other"}, "enabled": False}
        r = await api.put("/api/v1/connectors/hook", json=changed)
        assert r.status_code == 200, r.text
        got = (await api.get("/api/v1/connectors/hook")).json()
        assert got["webhook"]["secret_set"] is True and got["enabled"] is False
        assert got["webhook"]["url"] == "http://127.0.0.1:9/other"
        assert (await api.put("/api/v1/connectors/nope", json={**body, "id": "nope"})).status_code == 404
        assert (await api.delete("/api/v1/connectors/hook")).status_code == 204
        assert (await api.get("/api/v1/connectors/hook")).status_code == 404
        assert (await api.get("/api/v1/connectors/hook/dead-letters")).status_code == 404
        # Without a token: refused.
        assert (await api.get("/api/v1/connectors", headers={"Authorization": ""})).status_code == 401


BAD: list[tuple[dict[str, Any], str]] = [
    ({"kind": "mqtt"}, "mqtt"),  # kind without its section
    ({"webhook": {"url": "ftp://x/y"}}, "webhook.url"),
    ({"webhook": {"url": "http://x/y", "secret": "short"}}, "webhook.secret"),
    ({"webhook": {"url": "http://x/y", "headers": {"X-Fieldgate-Signature": "x"}}}, "webhook.headers"),
    ({"delivery": {"max_attempts": 0}}, "delivery.max_attempts"),
    ({"delivery": {"overflow": "drop"}}, "delivery.overflow"),
    ({"delivery": {"initial_backoff_s": 5, "max_backoff_s": 1}}, "max_backoff_s"),
    ({"filter": {"event_types": ["measurment"]}}, "filter.event_types"),
    ({"filter": {"devices": ["a b"]}}, "filter.devices"),
    ({"id": "Bad Id"}, "id"),
    ({"surprise": 1}, "surprise"),
    (
        {"kind": "mqtt", "webhook": None, "mqtt": {"host": "h", "topic": "x/{nope}"}},
        "mqtt.topic",
    ),
    ({"kind": "kafka", "webhook": None, "kafka": {"bootstrap": "h:1", "topic": "a b"}}, "kafka.topic"),
    ({"mqtt": {"host": "h"}}, "mqtt"),  # a second section
]


async def test_bad_definitions_are_422_naming_the_field(tmp_path: Path) -> None:
    async with cloud(tmp_path) as (_app, api):
        for change, field in BAD:
            r = await api.post("/api/v1/connectors", json={**hook("http://127.0.0.1:9/h"), **change})
            assert r.status_code == 422, (change, r.text)
            assert field in r.json()["detail"], (change, r.json()["detail"])
        assert (await api.get("/api/v1/connectors")).json()["total"] == 0


async def test_dead_letters_over_rest_and_redrive(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(4)]
    async with webhook_receiver(secret=SECRET) as rx, cloud(tmp_path) as (app, api):
        rx.mode = "500"
        assert (await api.post("/api/v1/connectors", json=hook(rx.url, max_attempts=2))).status_code == 201
        # No waiting for the stage to notice the connector: it delivers from its creation on.
        await publish(app.parts.bus, events)

        async def letters() -> dict[str, Any] | None:
            body = (await api.get("/api/v1/connectors/hook/dead-letters")).json()
            # The page and the total are two reads: a letter stored between them is in one only.
            return body if body["total"] == 4 and len(body["items"]) == 4 else None

        body = await eventually(letters, what="4 dead letters", timeout=20)
        assert {d["event_id"] for d in body["items"]} == {e.id for e in events}
        item = body["items"][0]
        assert (
            item["attempts"] == 2 and "HTTP 500" in item["reason"] and item["event"]["type"] == "measurement"
        )
        rx.mode = "ok"
        one = events[0].id
        r = await api.post("/api/v1/connectors/hook/dead-letters/redrive", json={"event_ids": [one]})
        assert r.status_code == 202 and r.json()["requested"] == 1
        await eventually(lambda: rx.event_ids() == [one], what="one re-driven")
        r = await api.post("/api/v1/connectors/hook/dead-letters/redrive")
        assert r.json()["requested"] == 3
        await eventually(lambda: set(rx.event_ids()) == {e.id for e in events}, what="all re-driven")

        async def empty() -> bool:
            return bool((await api.get("/api/v1/connectors/hook/dead-letters")).json()["total"] == 0)

        await eventually(empty, what="dead letters gone")


async def test_replay_cli_resends_a_time_range(tmp_path: Path) -> None:
    first = [make_event(i) for i in range(3)]
    second = [make_event(i) for i in range(3, 6)]
    async with webhook_receiver(secret=SECRET) as rx:
        async with cloud(tmp_path) as (app, api):
            assert isinstance(app.parts.bus, EmbeddedBus)
            # A group of its own that reads [persisted] and never commits: it shows the records'
            # stored timestamps, which set the replayed window, and it keeps the records for the
            # replay (the bus trims, every few seconds, what every group has committed).
            async with app.parts.bus.consumer("replay-window", PERSISTED) as reader:
                assert (await api.post("/api/v1/connectors", json=hook(rx.url))).status_code == 201
                await publish(app.parts.bus, first)
                before = await collect(lambda: reader.poll(timeout_s=0.5), 1, what="the first range's record")
                last_before = max(r.timestamp_ms for r in before)
                # The next records are stamped later than these (a condition, not a sleep).
                await eventually(lambda: now_ms() > last_before, what="the clock past the first range")
                await publish(app.parts.bus, second)
                after = await collect(lambda: reader.poll(timeout_s=0.5), 1, what="the second range's record")
            since_ms = min(r.timestamp_ms for r in after)
            assert len(before) == len(after) == 1 and last_before < since_ms  # one record per device
            await eventually(lambda: len(rx.event_ids()) == 6, what="first delivery")
            await eventually(
                lambda: connectors_committed(app), what="the connectors group committed [persisted]"
            )
        assert rx.duplicates == 0
        config = tmp_path / "cloud.yaml"
        config.write_text(f"data_dir: {tmp_path}\n")
        argv = ["cloud", "replay", "--config", str(config), "--stage", "persisted", "--group", "connectors"]
        assert await asyncio.to_thread(main, [*argv, "--tenant", "default", "--since", str(since_ms)]) == 0
        async with cloud(tmp_path) as (_app, _api):
            await eventually(lambda: len(rx.event_ids()) == 9, what="replayed delivery")
            await never(lambda: len(rx.event_ids()) > 9, within=0.5, what="more than the replayed range")
        # Exactly the second range again, with the keys the receiver already has.
        assert rx.event_ids()[6:] == [e.id for e in second]
        assert set(rx.keys) == {e.id for e in first + second} and rx.duplicates == 3
