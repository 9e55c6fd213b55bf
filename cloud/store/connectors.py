"""Durable connector definitions and dead letters: the protocol and what both backends share.

Both keep a tenant's data with the tenant's other data and apart from other tenants':

* **SQLite** (``store.kind: sqlite``, ``store/sqlite/connectors.py``):
  ``data_dir/connectors/<tenant>.db``, tables ``connectors`` and ``dead_letters``;
* **Cassandra** (``store.kind: cassandra``, ``store/cassandra/connectors.py``): the tenant's
  keyspace (``<prefix>_<tenant>``), tables ``connectors`` and ``connector_dead_letters``
  (partition = connector), created by the store's own schema component (``connectors``) so
  the event store and registry modules do not know of them. A new connector id is a
  lightweight transaction (``IF NOT EXISTS``), so two API replicas never both create it.

A dead letter is keyed by (connector, event id): dead-lettering the same event twice (a
replay, a retry after a crash) keeps one letter with the latest reason. ``redrive`` marks
letters for the connectors stage, which re-queues them (the API process does not deliver).

**Positions** (table ``connector_positions``): per connector and partition of the tenant's
``[persisted]`` topic, the next offset the connector has not finished with. A connector
created through the API gets its start there (the topic's end offsets at creation, plus
``ANY_PARTITION`` → 0 for partitions it has no row for), so it delivers every event stored
after its creation however late the stage notices it; the stage then keeps them up to date,
so a connector never re-sends what it finished because another one is behind. The stage's own
last committed offsets are kept under the owner ``STAGE_OWNER`` (not a connector id), to tell
a replay (the group's offsets moved back by an operator) from a restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.store import TenantOwned

#: Most dead letters one call returns or marks (the API pages through more with ``limit``).
MAX_DEAD_LETTERS = 10_000
#: The owner of the connectors stage's own committed offsets among the positions.
STAGE_OWNER = "~stage"
#: The partition of a start position that applies to every partition without a row.
ANY_PARTITION = -1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    connector: str
    event_id: str
    event: bytes  # the pb.Event, serialized
    reason: str
    attempts: int
    failed_ms: int
    redrive: bool = False


class ConnectorStore(TenantOwned, Protocol):
    """Connector definitions and dead letters; ``delete_tenant`` removes both."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def list_connectors(self, tenant: str) -> list[ConnectorSpec]: ...

    async def get(self, tenant: str, connector: str) -> ConnectorSpec | None: ...

    async def create(
        self, tenant: str, spec: ConnectorSpec, start: Mapping[int, int] | None = None
    ) -> ConnectorSpec:
        """Conflict if the id is taken. ``start``: where on the tenant's ``[persisted]`` topic
        the connector begins (``{partition: offset}``; partitions not listed begin at 0); None
        records no start, and the stage begins it wherever it is reading when it first sees it."""

    async def replace(self, tenant: str, spec: ConnectorSpec) -> ConnectorSpec:
        """NotFound if there is no such connector."""

    async def delete(self, tenant: str, connector: str) -> bool:
        """Delete the connector, its dead letters and positions; False if it did not exist."""

    async def positions(self, tenant: str) -> dict[str, dict[int, int]]:
        """Every owner's (connectors', ``STAGE_OWNER``'s) ``{partition: offset}``."""

    async def save_positions(self, tenant: str, owner: str, positions: Mapping[int, int]) -> None:
        """Store (overwrite) ``owner``'s offsets of the given partitions."""

    async def add_dead_letters(self, tenant: str, letters: Sequence[DeadLetter]) -> None:
        """Store (or overwrite, with redrive cleared) each letter."""

    async def list_dead_letters(self, tenant: str, connector: str, limit: int = 100) -> list[DeadLetter]: ...

    async def count_dead_letters(self, tenant: str, connector: str) -> int: ...

    async def request_redrive(
        self, tenant: str, connector: str, event_ids: Sequence[str] | None = None
    ) -> int:
        """Mark letters (all when ``event_ids`` is None, at most MAX_DEAD_LETTERS) for re-drive;
        the number marked."""

    async def redrive_batch(self, tenant: str, connector: str, limit: int) -> list[DeadLetter]:
        """Letters marked for re-drive, at most ``limit``."""

    async def remove_dead_letters(self, tenant: str, connector: str, event_ids: Sequence[str]) -> None: ...


def check_limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_DEAD_LETTERS))


def start_rows(connector: str, start: Mapping[int, int]) -> list[tuple[str, int, int]]:
    rows = {ANY_PARTITION: 0, **{int(p): int(o) for p, o in start.items()}}
    return [(connector, p, max(0, o)) for p, o in sorted(rows.items())]


def letter_from_row(row: Sequence[Any]) -> DeadLetter:
    return DeadLetter(
        connector=row[0],
        event_id=row[1],
        event=bytes(row[2]),
        reason=row[3],
        attempts=int(row[4]),
        failed_ms=int(row[5]),
        redrive=bool(row[6]),
    )


LETTER_COLUMNS = "connector, event_id, event, reason, attempts, failed_ms, redrive"
