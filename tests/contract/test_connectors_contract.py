"""The connector store's contract on SQLite and Cassandra (the latter marked distributed):
definitions with their start on the bus, positions per owner and partition, and what delete
and a refused second create do to them; another store object (replica) sees the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldgate.cloud.config import CloudConfig
from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.errors import Conflict
from fieldgate.cloud.store.backend import storage_backend
from fieldgate.cloud.store.connectors import (
    ANY_PARTITION,
    STAGE_OWNER,
    ConnectorStore,
    DeadLetter,
)
from tests.contract.conftest import STORES, backend_config, drop_keyspaces

T = "default"


def spec(cid: str, url: str = "https://hooks.example.com/h") -> ConnectorSpec:
    return ConnectorSpec.model_validate({"id": cid, "kind": "webhook", "webhook": {"url": url}})


@pytest.fixture(params=STORES)
async def config(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CloudConfig]:
    cfg = backend_config(request, request.param, tmp_path / "cloud")
    yield cfg
    if request.param == "cassandra":
        await drop_keyspaces(request.getfixturevalue("cassandra"), cfg.store.keyspace_prefix)


async def _store(config: CloudConfig) -> ConnectorStore:
    store = storage_backend(config).connectors()
    await store.start()
    return store


async def test_a_start_is_kept_with_the_connector_and_positions_move_on(config: CloudConfig) -> None:
    store = await _store(config)
    other = await _store(config)
    try:
        assert await store.positions(T) == {}
        await store.create(T, spec("hook"), start={0: 12, 1: 7})
        await store.create(T, spec("legacy"))  # no start recorded
        assert await other.positions(T) == {"hook": {ANY_PARTITION: 0, 0: 12, 1: 7}}
        await store.save_positions(T, "hook", {0: 15})
        await store.save_positions(T, STAGE_OWNER, {0: 14, 1: 9})
        assert await other.positions(T) == {
            "hook": {ANY_PARTITION: 0, 0: 15, 1: 7},
            STAGE_OWNER: {0: 14, 1: 9},
        }
        # A second create of the id is refused and leaves the first one's place alone.
        with pytest.raises(Conflict):
            await other.create(T, spec("hook", "https://elsewhere.example.com/"), start={0: 99})
        assert (await store.positions(T))["hook"] == {ANY_PARTITION: 0, 0: 15, 1: 7}
        got = await other.get(T, "hook")
        assert (
            got is not None and str(got.webhook.url if got.webhook else "") == "https://hooks.example.com/h"
        )
        # Delete takes the positions with the definition and the dead letters.
        letter = DeadLetter("hook", "e1", b"", "HTTP 500 Internal Server Error", 2, 1)
        await store.add_dead_letters(T, [letter])
        assert await store.delete(T, "hook")
        assert "hook" not in await other.positions(T)
        assert await other.count_dead_letters(T, "hook") == 0
        # Re-created: a new start, nothing of the old one's.
        await other.create(T, spec("hook"), start={0: 40})
        assert (await store.positions(T))["hook"] == {ANY_PARTITION: 0, 0: 40}
        assert (await store.positions("other")) == {}  # tenants apart
    finally:
        await store.stop()
        await other.stop()
