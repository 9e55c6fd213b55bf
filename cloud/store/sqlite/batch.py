"""The SQLite batch store: ``data_dir/batch/<tenant>.db`` (the protocol and what both backends
share in :mod:`fieldgate.cloud.store.batch`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from fieldgate.cloud.domain.batch import (
    BatchElement,
    BatchOperation,
    ElementStatus,
    Schedule,
    ScheduleRun,
)
from fieldgate.cloud.errors import Conflict, NotFound
from fieldgate.cloud.sqlite_worker import transaction
from fieldgate.cloud.store.batch import (
    ELEMENT_COLUMNS,
    MAX_ROWS,
    UNFINISHED,
    element_from_row,
    row_limit,
)
from fieldgate.cloud.store.sqlite.files import TenantFileStore
from fieldgate.cloud.store.validators import check_page
from fieldgate.timeutil import now_ms

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


class SqliteBatchStore(TenantFileStore):
    """:class:`BatchStore` in ``<root>/<tenant>.db`` (one file per tenant)."""

    name = "batch"
    schema = _SCHEMA

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
                    f"INSERT INTO elements ({ELEMENT_COLUMNS}) VALUES (?, ?, ?, NULL, '', ?)",
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
                (*UNFINISHED, MAX_ROWS),
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
                f"SELECT {ELEMENT_COLUMNS} FROM elements WHERE operation = ? ORDER BY device LIMIT ? OFFSET ?",
                (op_id, limit, offset),
            )
            return [element_from_row(r) for r in rows], total

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
                f"SELECT {ELEMENT_COLUMNS} FROM elements WHERE operation = ? AND status IN ({marks}) "
                "ORDER BY device LIMIT ?",
                (op_id, *wanted, row_limit(limit)),
            )
            return [element_from_row(r) for r in rows]

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
                (schedule_id, row_limit(limit)),
            )
            return [
                ScheduleRun(schedule=r[0], due_ms=r[1], replica=r[2], run_ms=r[3], result=r[4]) for r in rows
            ]

        return await self._worker.run(run)
