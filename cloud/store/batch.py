"""Durable batch operations, their elements, schedules and schedule claims: the protocol and
what both backends share.

Both keep a tenant's rows with the tenant's other data and apart from other tenants':

* **SQLite** (``store.kind: sqlite``, ``store/sqlite/batch.py``): ``data_dir/batch/<tenant>.db``,
  tables ``operations``, ``elements``, ``schedules`` and ``schedule_runs``;
* **Cassandra** (``store.kind: cassandra``, ``store/cassandra/batch.py``): the tenant's
  keyspace, tables ``batch_operations``, ``batch_elements`` (partition = operation),
  ``schedules`` and ``schedule_runs`` (partition = schedule), created by the store's own
  schema component (``batch``).

The operation and schedule documents are the pydantic models of ``cloud/domain/batch.py``
stored as JSON. Exactly-once scheduling rests on :meth:`BatchStore.claim_run`: the first
caller to claim a ``(schedule, due_ms)`` pair wins — a primary key on SQLite (one database
file shared by every runner of the machine), ``INSERT … IF NOT EXISTS`` (a lightweight
transaction, serial consistency) on Cassandra — and every other replica is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from fieldgate.cloud.domain.batch import (
    BatchElement,
    BatchOperation,
    ElementStatus,
    OperationStatus,
    Schedule,
    ScheduleRun,
)
from fieldgate.cloud.store import TenantOwned

MAX_ROWS = 10_000
UNFINISHED = (OperationStatus.PENDING.value, OperationStatus.RUNNING.value)


class BatchStore(TenantOwned, Protocol):
    """Batch operations with their elements, schedules and their runs; ``delete_tenant``
    removes all of them."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def create_operation(
        self, tenant: str, op: BatchOperation, devices: Sequence[str]
    ) -> BatchOperation:
        """Store the operation with one PENDING element per device. Conflict if the id exists."""

    async def get_operation(self, tenant: str, op_id: str) -> BatchOperation | None: ...

    async def list_operations(
        self, tenant: str, page: int, page_size: int
    ) -> tuple[list[BatchOperation], int]:
        """Newest first, with the total."""

    async def unfinished_operations(self, tenant: str) -> list[BatchOperation]:
        """Operations still PENDING or RUNNING (resumed at start)."""

    async def save_operation(self, tenant: str, op: BatchOperation) -> None: ...

    async def list_elements(
        self, tenant: str, op_id: str, page: int, page_size: int
    ) -> tuple[list[BatchElement], int]:
        """By device token, with the total."""

    async def elements_in(
        self, tenant: str, op_id: str, statuses: Iterable[ElementStatus], limit: int
    ) -> list[BatchElement]: ...

    async def save_elements(self, tenant: str, elements: Sequence[BatchElement]) -> None:
        """Overwrite each element's status, invocation and reason."""

    async def count_elements(self, tenant: str, op_id: str) -> dict[str, int]:
        """How many elements are in each status (statuses with none left out)."""

    async def cancel_pending(self, tenant: str, op_id: str) -> int:
        """PENDING elements -> CANCELLED; how many."""

    async def create_schedule(self, tenant: str, schedule: Schedule) -> Schedule:
        """Conflict if the id exists."""

    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None: ...

    async def list_schedules(self, tenant: str) -> list[Schedule]: ...

    async def replace_schedule(self, tenant: str, schedule: Schedule) -> Schedule:
        """NotFound if there is no such schedule."""

    async def delete_schedule(self, tenant: str, schedule_id: str) -> bool: ...

    async def claim_run(self, tenant: str, run: ScheduleRun) -> bool:
        """True for the one caller that claims ``(run.schedule, run.due_ms)`` first."""

    async def finish_run(self, tenant: str, schedule_id: str, due_ms: int, result: str) -> None: ...

    async def get_run(self, tenant: str, schedule_id: str, due_ms: int) -> ScheduleRun | None: ...

    async def list_runs(self, tenant: str, schedule_id: str, limit: int = 100) -> list[ScheduleRun]:
        """Newest first."""


def row_limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_ROWS))


ELEMENT_COLUMNS = "operation, device, status, invocation, reason, updated_ms"


def element_from_row(row: Sequence[Any]) -> BatchElement:
    return BatchElement(
        operation=row[0],
        device=row[1],
        status=ElementStatus(row[2]),
        invocation=row[3] or None,
        reason=row[4] or "",
        updated_ms=int(row[5] or 0),
    )
