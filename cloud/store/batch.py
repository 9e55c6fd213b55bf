"""Durable batch operations, their elements, schedules and schedule claims: SQLite and Cassandra.

Both keep a tenant's rows with the tenant's other data and apart from other tenants':

* **SQLite** (``store.kind: sqlite``): ``data_dir/batch/<tenant>.db``, tables
  ``operations``, ``elements``, ``schedules`` and ``schedule_runs``;
* **Cassandra** (``store.kind: cassandra``): the tenant's keyspace, tables
  ``batch_operations``, ``batch_elements`` (partition = operation), ``schedules`` and
  ``schedule_runs`` (partition = schedule), created by this module's own schema component
  (``batch``).

The operation and schedule documents are the pydantic models of ``cloud/domain/batch.py``
stored as JSON. Exactly-once scheduling rests on :meth:`BatchStore.claim_run`: the first
caller to claim a ``(schedule, due_ms)`` pair wins — a primary key on SQLite (one database
file shared by every runner of the machine), ``INSERT … IF NOT EXISTS`` (a lightweight
transaction, serial consistency) on Cassandra — and every other replica is refused.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from fieldgate.cloud.domain.batch import (
    BatchElement,
    BatchOperation,
    ElementStatus,
    OperationStatus,
    Schedule,
    ScheduleRun,
)
from fieldgate.cloud.errors import Conflict, NotFound, StoreError
from fieldgate.cloud.sqlite_worker import SqliteWorker, transaction
from fieldgate.cloud.store import TenantOwned
from fieldgate.cloud.store.cassandra.keyspace import TenantKeyspaceStore
from fieldgate.cloud.store.validators import check_page, require_tenant, valid_tenant
from fieldgate.timeutil import now_ms

MAX_ROWS = 10_000
_UNFINISHED = (OperationStatus.PENDING.value, OperationStatus.RUNNING.value)


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


def _limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_ROWS))


# ------------------------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_created ON operations (created_ms);
CREATE TABLE IF NOT EXISTS elements (
    operation TEXT NOT NULL,
    device TEXT NOT NULL,
    status TEXT NOT NULL,
    invocation TEXT,
    reason TEXT NOT NULL DEFAULT '',
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (operation, device)
);
CREATE INDEX IF NOT EXISTS elements_status ON elements (operation, status);
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule_runs (
    schedule TEXT NOT NULL,
    due_ms INTEGER NOT NULL,
    replica TEXT NOT NULL,
    run_ms INTEGER NOT NULL,
    result TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (schedule, due_ms)
);
"""

_ELEMENT_COLUMNS = "operation, device, status, invocation, reason, updated_ms"


def _element(row: Sequence[Any]) -> BatchElement:
    return BatchElement(
        operation=row[0],
        device=row[1],
        status=ElementStatus(row[2]),
        invocation=row[3] or None,
        reason=row[4] or "",
        updated_ms=int(row[5] or 0),
    )


class SqliteBatchStore:
    """:class:`BatchStore` in ``<root>/<tenant>.db`` (one file per tenant)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._worker = SqliteWorker("batch", error=StoreError)

    async def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    def _path(self, tenant: str) -> Path:
        return self.root / f"{require_tenant(tenant)}.db"

    def _conn(self, tenant: str, *, create: bool = True) -> sqlite3.Connection | None:
        return self._worker.connect(self._path(tenant), _SCHEMA, create=create)

    async def ensure_tenant(self, tenant: str) -> None:
        """Create ``<tenant>.db`` now (otherwise its first operation or schedule creates it)."""
        await self._worker.run(self._conn, tenant)

    async def delete_tenant(self, tenant: str) -> bool:
        """Delete ``<tenant>.db``: operations, elements, schedules and their runs."""
        if not valid_tenant(tenant):
            return False
        return await self._worker.run(self._worker.remove, self._path(tenant))

    def forget_tenant(self, tenant: str) -> None:
        if valid_tenant(tenant):
            self._worker.close_soon(self._path(tenant))

    def _must(self, tenant: str) -> sqlite3.Connection:
        conn = self._conn(tenant)
        assert conn is not None
        return conn

    async def create_operation(
        self, tenant: str, op: BatchOperation, devices: Sequence[str]
    ) -> BatchOperation:
        def run() -> None:
            conn = self._must(tenant)
            with transaction(conn):
                try:
                    conn.execute(
                        "INSERT INTO operations (id, doc, status, created_ms) VALUES (?, ?, ?, ?)",
                        (op.id, op.to_json(), op.status.value, op.created_ms),
                    )
                except sqlite3.IntegrityError as err:
                    raise Conflict(f"batch operation {op.id!r} exists") from err
                conn.executemany(
                    f"INSERT INTO elements ({_ELEMENT_COLUMNS}) VALUES (?, ?, ?, NULL, '', ?)",
                    [(op.id, d, ElementStatus.PENDING.value, op.created_ms) for d in devices],
                )

        await self._worker.run(run)
        return op

    async def get_operation(self, tenant: str, op_id: str) -> BatchOperation | None:
        def run() -> str | None:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return None
            row = conn.execute("SELECT doc FROM operations WHERE id = ?", (op_id,)).fetchone()
            return None if row is None else str(row[0])

        text = await self._worker.run(run)
        return None if text is None else BatchOperation.from_json(text)

    async def list_operations(
        self, tenant: str, page: int, page_size: int
    ) -> tuple[list[BatchOperation], int]:
        limit, offset = check_page(page, page_size, 1000)

        def run() -> tuple[list[str], int]:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return [], 0
            total = int(conn.execute("SELECT COUNT(*) FROM operations").fetchone()[0])
            rows = conn.execute(
                "SELECT doc FROM operations ORDER BY created_ms DESC, id LIMIT ? OFFSET ?", (limit, offset)
            )
            return [r[0] for r in rows], total

        docs, total = await self._worker.run(run)
        return [BatchOperation.from_json(d) for d in docs], total

    async def unfinished_operations(self, tenant: str) -> list[BatchOperation]:
        def run() -> list[str]:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return []
            rows = conn.execute(
                "SELECT doc FROM operations WHERE status IN (?, ?) ORDER BY created_ms LIMIT ?",
                (*_UNFINISHED, MAX_ROWS),
            )
            return [r[0] for r in rows]

        return [BatchOperation.from_json(d) for d in await self._worker.run(run)]

    async def save_operation(self, tenant: str, op: BatchOperation) -> None:
        def run() -> None:
            cur = self._must(tenant).execute(
                "UPDATE operations SET doc = ?, status = ? WHERE id = ?",
                (op.to_json(), op.status.value, op.id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"batch operation {op.id!r} does not exist")

        await self._worker.run(run)

    async def list_elements(
        self, tenant: str, op_id: str, page: int, page_size: int
    ) -> tuple[list[BatchElement], int]:
        limit, offset = check_page(page, page_size, 1000)

        def run() -> tuple[list[BatchElement], int]:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return [], 0
            total = int(
                conn.execute("SELECT COUNT(*) FROM elements WHERE operation = ?", (op_id,)).fetchone()[0]
            )
            rows = conn.execute(
                f"SELECT {_ELEMENT_COLUMNS} FROM elements WHERE operation = ? ORDER BY device LIMIT ? OFFSET ?",
                (op_id, limit, offset),
            )
            return [_element(r) for r in rows], total

        return await self._worker.run(run)

    async def elements_in(
        self, tenant: str, op_id: str, statuses: Iterable[ElementStatus], limit: int
    ) -> list[BatchElement]:
        wanted = [s.value for s in statuses]

        def run() -> list[BatchElement]:
            conn = self._conn(tenant, create=False)
            if conn is None or not wanted:
                return []
            marks = ", ".join("?" * len(wanted))
            rows = conn.execute(
                f"SELECT {_ELEMENT_COLUMNS} FROM elements WHERE operation = ? AND status IN ({marks}) "
                "ORDER BY device LIMIT ?",
                (op_id, *wanted, _limit(limit)),
            )
            return [_element(r) for r in rows]

        return await self._worker.run(run)

    async def save_elements(self, tenant: str, elements: Sequence[BatchElement]) -> None:
        if not elements:
            return

        def run() -> None:
            conn = self._must(tenant)
            with transaction(conn):
                conn.executemany(
                    "UPDATE elements SET status = ?, invocation = ?, reason = ?, updated_ms = ? "
                    "WHERE operation = ? AND device = ?",
                    [
                        (
                            e.status.value,
                            e.invocation,
                            e.reason,
                            e.updated_ms or now_ms(),
                            e.operation,
                            e.device,
                        )
                        for e in elements
                    ],
                )

        await self._worker.run(run)

    async def count_elements(self, tenant: str, op_id: str) -> dict[str, int]:
        def run() -> dict[str, int]:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return {}
            rows = conn.execute(
                "SELECT status, COUNT(*) FROM elements WHERE operation = ? GROUP BY status", (op_id,)
            )
            return {str(r[0]): int(r[1]) for r in rows}

        return await self._worker.run(run)

    async def cancel_pending(self, tenant: str, op_id: str) -> int:
        def run() -> int:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return 0
            cur = conn.execute(
                "UPDATE elements SET status = ?, reason = 'cancelled', updated_ms = ? "
                "WHERE operation = ? AND status = ?",
                (ElementStatus.CANCELLED.value, now_ms(), op_id, ElementStatus.PENDING.value),
            )
            return cur.rowcount

        return await self._worker.run(run)

    async def create_schedule(self, tenant: str, schedule: Schedule) -> Schedule:
        def run() -> None:
            try:
                self._must(tenant).execute(
                    "INSERT INTO schedules (id, doc) VALUES (?, ?)", (schedule.id, schedule.to_json())
                )
            except sqlite3.IntegrityError as err:
                raise Conflict(f"schedule {schedule.id!r} exists") from err

        await self._worker.run(run)
        return schedule

    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None:
        def run() -> str | None:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return None
            row = conn.execute("SELECT doc FROM schedules WHERE id = ?", (schedule_id,)).fetchone()
            return None if row is None else str(row[0])

        text = await self._worker.run(run)
        return None if text is None else Schedule.from_json(text)

    async def list_schedules(self, tenant: str) -> list[Schedule]:
        def run() -> list[str]:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return []
            return [r[0] for r in conn.execute("SELECT doc FROM schedules ORDER BY id LIMIT ?", (MAX_ROWS,))]

        return [Schedule.from_json(d) for d in await self._worker.run(run)]

    async def replace_schedule(self, tenant: str, schedule: Schedule) -> Schedule:
        def run() -> None:
            cur = self._must(tenant).execute(
                "UPDATE schedules SET doc = ? WHERE id = ?", (schedule.to_json(), schedule.id)
            )
            if cur.rowcount == 0:
                raise NotFound(f"schedule {schedule.id!r} does not exist")

        await self._worker.run(run)
        return schedule

    async def delete_schedule(self, tenant: str, schedule_id: str) -> bool:
        def run() -> bool:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return False
            with transaction(conn):
                cur = conn.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
                conn.execute("DELETE FROM schedule_runs WHERE schedule = ?", (schedule_id,))
            return cur.rowcount > 0

        return await self._worker.run(run)

    async def claim_run(self, tenant: str, run: ScheduleRun) -> bool:
        def go() -> bool:
            try:
                self._must(tenant).execute(
                    "INSERT INTO schedule_runs (schedule, due_ms, replica, run_ms, result) VALUES (?, ?, ?, ?, '')",
                    (run.schedule, run.due_ms, run.replica, run.run_ms),
                )
            except sqlite3.IntegrityError:
                return False
            return True

        return await self._worker.run(go)

    async def finish_run(self, tenant: str, schedule_id: str, due_ms: int, result: str) -> None:
        def run() -> None:
            self._must(tenant).execute(
                "UPDATE schedule_runs SET result = ? WHERE schedule = ? AND due_ms = ?",
                (result, schedule_id, due_ms),
            )

        await self._worker.run(run)

    async def get_run(self, tenant: str, schedule_id: str, due_ms: int) -> ScheduleRun | None:
        def run() -> ScheduleRun | None:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return None
            r = conn.execute(
                "SELECT schedule, due_ms, replica, run_ms, result FROM schedule_runs WHERE schedule = ? AND due_ms = ?",
                (schedule_id, due_ms),
            ).fetchone()
            return (
                None
                if r is None
                else ScheduleRun(schedule=r[0], due_ms=r[1], replica=r[2], run_ms=r[3], result=r[4])
            )

        return await self._worker.run(run)

    async def list_runs(self, tenant: str, schedule_id: str, limit: int = 100) -> list[ScheduleRun]:
        def run() -> list[ScheduleRun]:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return []
            rows = conn.execute(
                "SELECT schedule, due_ms, replica, run_ms, result FROM schedule_runs WHERE schedule = ? "
                "ORDER BY due_ms DESC LIMIT ?",
                (schedule_id, _limit(limit)),
            )
            return [
                ScheduleRun(schedule=r[0], due_ms=r[1], replica=r[2], run_ms=r[3], result=r[4]) for r in rows
            ]

        return await self._worker.run(run)


# ---------------------------------------------------------------------------- Cassandra


def _cassandra_migrations(ks: str) -> list[tuple[int, list[str]]]:
    return [
        (
            1,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.batch_operations"
                " (id text PRIMARY KEY, doc text, status text, created_ms bigint)",
                f"CREATE TABLE IF NOT EXISTS {ks}.batch_elements (operation text, device text, status text,"
                " invocation text, reason text, updated_ms bigint, PRIMARY KEY ((operation), device))",
                f"CREATE TABLE IF NOT EXISTS {ks}.schedules (id text PRIMARY KEY, doc text)",
                f"CREATE TABLE IF NOT EXISTS {ks}.schedule_runs (schedule text, due_ms bigint, replica text,"
                " run_ms bigint, result text, PRIMARY KEY ((schedule), due_ms))"
                " WITH CLUSTERING ORDER BY (due_ms DESC)",
            ],
        )
    ]


class CassandraBatchStore(TenantKeyspaceStore):
    """:class:`BatchStore` in each tenant's keyspace (see the module docstring)."""

    component = "batch"
    migrations = staticmethod(_cassandra_migrations)

    async def _all_elements(self, tenant: str, op_id: str) -> list[BatchElement]:
        rows = await self._run(
            tenant,
            f"SELECT {_ELEMENT_COLUMNS} FROM {{ks}}.batch_elements WHERE operation = %s LIMIT {MAX_ROWS}",
            (op_id,),
        )
        return [_element(r) for r in rows]

    async def create_operation(
        self, tenant: str, op: BatchOperation, devices: Sequence[str]
    ) -> BatchOperation:
        # Elements first, the operation row last (with IF NOT EXISTS): an operation is only
        # visible (and resumable) once all its elements are stored.
        if await self.get_operation(tenant, op.id) is not None:
            raise Conflict(f"batch operation {op.id!r} exists")
        await asyncio.gather(
            *(
                self._run(
                    tenant,
                    f"INSERT INTO {{ks}}.batch_elements ({_ELEMENT_COLUMNS}) VALUES (%s, %s, %s, null, '', %s)",
                    (op.id, d, ElementStatus.PENDING.value, op.created_ms),
                )
                for d in devices
            )
        )
        rows = await self._run(
            tenant,
            "INSERT INTO {ks}.batch_operations (id, doc, status, created_ms) VALUES (%s, %s, %s, %s) IF NOT EXISTS",
            (op.id, op.to_json(), op.status.value, op.created_ms),
        )
        if not rows or not rows[0][0]:
            raise Conflict(f"batch operation {op.id!r} exists")
        return op

    async def get_operation(self, tenant: str, op_id: str) -> BatchOperation | None:
        rows = await self._run(tenant, "SELECT doc FROM {ks}.batch_operations WHERE id = %s", (op_id,))
        return BatchOperation.from_json(rows[0][0]) if rows else None

    async def _all_operations(self, tenant: str) -> list[BatchOperation]:
        rows = await self._run(tenant, f"SELECT doc FROM {{ks}}.batch_operations LIMIT {MAX_ROWS}")
        return [BatchOperation.from_json(r[0]) for r in rows]

    async def list_operations(
        self, tenant: str, page: int, page_size: int
    ) -> tuple[list[BatchOperation], int]:
        limit, offset = check_page(page, page_size, 1000)
        ops = sorted(await self._all_operations(tenant), key=lambda o: (-o.created_ms, o.id))
        return ops[offset : offset + limit], len(ops)

    async def unfinished_operations(self, tenant: str) -> list[BatchOperation]:
        ops = [o for o in await self._all_operations(tenant) if o.status.value in _UNFINISHED]
        return sorted(ops, key=lambda o: o.created_ms)

    async def save_operation(self, tenant: str, op: BatchOperation) -> None:
        rows = await self._run(
            tenant,
            "UPDATE {ks}.batch_operations SET doc = %s, status = %s WHERE id = %s IF EXISTS",
            (op.to_json(), op.status.value, op.id),
        )
        if not rows or not rows[0][0]:
            raise NotFound(f"batch operation {op.id!r} does not exist")

    async def list_elements(
        self, tenant: str, op_id: str, page: int, page_size: int
    ) -> tuple[list[BatchElement], int]:
        limit, offset = check_page(page, page_size, 1000)
        items = await self._all_elements(tenant, op_id)  # clustered by device
        return items[offset : offset + limit], len(items)

    async def elements_in(
        self, tenant: str, op_id: str, statuses: Iterable[ElementStatus], limit: int
    ) -> list[BatchElement]:
        wanted = set(statuses)
        return [e for e in await self._all_elements(tenant, op_id) if e.status in wanted][: _limit(limit)]

    async def save_elements(self, tenant: str, elements: Sequence[BatchElement]) -> None:
        await asyncio.gather(
            *(
                self._run(
                    tenant,
                    "UPDATE {ks}.batch_elements SET status = %s, invocation = %s, reason = %s, updated_ms = %s"
                    " WHERE operation = %s AND device = %s",
                    (e.status.value, e.invocation, e.reason, e.updated_ms or now_ms(), e.operation, e.device),
                )
                for e in elements
            )
        )

    async def count_elements(self, tenant: str, op_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in await self._all_elements(tenant, op_id):
            counts[e.status.value] = counts.get(e.status.value, 0) + 1
        return counts

    async def cancel_pending(self, tenant: str, op_id: str) -> int:
        pending = await self.elements_in(tenant, op_id, [ElementStatus.PENDING], MAX_ROWS)
        results = await asyncio.gather(
            *(
                self._run(
                    tenant,
                    "UPDATE {ks}.batch_elements SET status = %s, reason = 'cancelled', updated_ms = %s"
                    " WHERE operation = %s AND device = %s IF status = %s",
                    (ElementStatus.CANCELLED.value, now_ms(), op_id, e.device, ElementStatus.PENDING.value),
                )
                for e in pending
            )
        )
        return sum(1 for rows in results if rows and rows[0][0])

    async def create_schedule(self, tenant: str, schedule: Schedule) -> Schedule:
        rows = await self._run(
            tenant,
            "INSERT INTO {ks}.schedules (id, doc) VALUES (%s, %s) IF NOT EXISTS",
            (schedule.id, schedule.to_json()),
        )
        if not rows or not rows[0][0]:
            raise Conflict(f"schedule {schedule.id!r} exists")
        return schedule

    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None:
        rows = await self._run(tenant, "SELECT doc FROM {ks}.schedules WHERE id = %s", (schedule_id,))
        return Schedule.from_json(rows[0][0]) if rows else None

    async def list_schedules(self, tenant: str) -> list[Schedule]:
        rows = await self._run(tenant, f"SELECT doc FROM {{ks}}.schedules LIMIT {MAX_ROWS}")
        return sorted((Schedule.from_json(r[0]) for r in rows), key=lambda s: s.id)

    async def replace_schedule(self, tenant: str, schedule: Schedule) -> Schedule:
        rows = await self._run(
            tenant,
            "UPDATE {ks}.schedules SET doc = %s WHERE id = %s IF EXISTS",
            (schedule.to_json(), schedule.id),
        )
        if not rows or not rows[0][0]:
            raise NotFound(f"schedule {schedule.id!r} does not exist")
        return schedule

    async def delete_schedule(self, tenant: str, schedule_id: str) -> bool:
        rows = await self._run(tenant, "DELETE FROM {ks}.schedules WHERE id = %s IF EXISTS", (schedule_id,))
        await self._run(tenant, "DELETE FROM {ks}.schedule_runs WHERE schedule = %s", (schedule_id,))
        return bool(rows and rows[0][0])

    async def claim_run(self, tenant: str, run: ScheduleRun) -> bool:
        rows = await self._run(
            tenant,
            "INSERT INTO {ks}.schedule_runs (schedule, due_ms, replica, run_ms, result)"
            " VALUES (%s, %s, %s, %s, '') IF NOT EXISTS",
            (run.schedule, run.due_ms, run.replica, run.run_ms),
        )
        return bool(rows and rows[0][0])

    async def finish_run(self, tenant: str, schedule_id: str, due_ms: int, result: str) -> None:
        await self._run(
            tenant,
            "UPDATE {ks}.schedule_runs SET result = %s WHERE schedule = %s AND due_ms = %s",
            (result, schedule_id, due_ms),
        )

    async def get_run(self, tenant: str, schedule_id: str, due_ms: int) -> ScheduleRun | None:
        rows = await self._run(
            tenant,
            "SELECT schedule, due_ms, replica, run_ms, result FROM {ks}.schedule_runs WHERE schedule = %s AND due_ms = %s",
            (schedule_id, due_ms),
        )
        if not rows:
            return None
        r = rows[0]
        return ScheduleRun(schedule=r[0], due_ms=r[1], replica=r[2], run_ms=r[3], result=r[4] or "")

    async def list_runs(self, tenant: str, schedule_id: str, limit: int = 100) -> list[ScheduleRun]:
        rows = await self._run(
            tenant,
            "SELECT schedule, due_ms, replica, run_ms, result FROM {ks}.schedule_runs WHERE schedule = %s LIMIT %s",
            (schedule_id, _limit(limit)),
        )
        return [
            ScheduleRun(schedule=r[0], due_ms=r[1], replica=r[2], run_ms=r[3], result=r[4] or "")
            for r in rows
        ]
