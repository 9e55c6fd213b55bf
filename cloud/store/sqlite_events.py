"""SQLite event store, one database per tenant (skeleton — implementation in progress)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fieldgate.cloud.store import EventQuery, Page
from fieldgate.v1 import events_pb2 as pb


class SqliteEventStore:
    """Implements :class:`fieldgate.cloud.store.EventStore`: ``<data_dir>/events-<tenant>.db``."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def add(self, tenant: str, events: Sequence[pb.Event]) -> list[pb.Event]:
        raise NotImplementedError

    async def list_device_events(self, query: EventQuery) -> Page[pb.Event]:
        raise NotImplementedError

    async def get_event(self, tenant: str, event_id: str) -> pb.Event | None:
        raise NotImplementedError

    async def events_for_invocation(self, tenant: str, invocation: str) -> list[pb.Event]:
        """The command invocation and response events linked to ``invocation``, oldest first."""
        raise NotImplementedError
