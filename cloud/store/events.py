"""The event store's interface (SQLite or Cassandra) and its queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fieldgate.cloud.store import Page, TenantOwned
from fieldgate.v1 import events_pb2 as pb


@dataclass(frozen=True, slots=True)
class EventQuery:
    tenant: str
    device: str
    # Payload field name of pb.Event ("measurement", "location", ...); None = all.
    kind: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    page: int = 1
    page_size: int = 100


@dataclass(frozen=True, slots=True)
class AssignmentEventQuery:
    """Like :class:`EventQuery`, for the events stamped with one assignment (``pb.Event.assignment``,
    set by inbound enrichment): what a device reported while it was assigned to that asset."""

    tenant: str
    assignment: str
    kind: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    page: int = 1
    page_size: int = 100


#: At most this many events are returned for one invocation (the invocation and its responses;
#: a device that answers one command thousands of times does not make the query unbounded).
MAX_INVOCATION_EVENTS = 1000


class EventStore(TenantOwned, Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def add(self, tenant: str, events: Sequence[pb.Event]) -> list[pb.Event]:
        """Store ``events`` idempotently: an event whose (device, alternate_id) is already
        stored is skipped. Returns the events that were newly stored."""

    async def list_device_events(self, query: EventQuery) -> Page[pb.Event]:
        """A device's events, newest first."""

    async def list_assignment_events(self, query: AssignmentEventQuery) -> Page[pb.Event]:
        """An assignment's events, newest first (same order, filters and paging as a device's)."""

    async def events_for_invocation(
        self, tenant: str, invocation: str, limit: int = MAX_INVOCATION_EVENTS
    ) -> list[pb.Event]:
        """The command_invocation event of ``invocation`` and the command_response events that
        answer it, oldest first (event time), at most ``limit``. Empty for an unknown id.
        A response whose ``refused`` is set (not its device's invocation) is not among them."""

    async def get_event(self, tenant: str, event_id: str) -> pb.Event | None: ...

    async def ensure_tenant(self, tenant: str) -> None:
        """Provision the tenant's event storage now (its file; its keyspace with every table)."""

    async def delete_tenant(self, tenant: str) -> bool:
        """Remove every event of the tenant (file / keyspace); False if there was none."""

    def forget_tenant(self, tenant: str) -> None:
        """Drop this instance's caches of a tenant another process deleted."""
