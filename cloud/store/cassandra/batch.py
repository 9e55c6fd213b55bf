"""The Cassandra batch store: component ``batch`` of each tenant's keyspace (the protocol and what
both backends share in :mod:`fieldgate.cloud.store.batch`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from fieldgate.cloud.domain.batch import (
    BatchElement,
    BatchOperation,
    ElementStatus,
    Schedule,
    ScheduleRun,
)
from fieldgate.cloud.errors import Conflict, NotFound
from fieldgate.cloud.store.batch import (
    ELEMENT_COLUMNS,
    MAX_ROWS,
    UNFINISHED,
    element_from_row,
    row_limit,
)
from fieldgate.cloud.store.cassandra.keyspace import TenantKeyspaceStore
from fieldgate.cloud.store.validators import check_page
from fieldgate.timeutil import now_ms


def _migrations(ks: str) -> list[tuple[int, list[str]]]:
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
    migrations = staticmethod(_migrations)

    async def _all_elements(self, tenant: str, op_id: str) -> list[BatchElement]:
        rows = await self._run(
            tenant,
            f"SELECT {ELEMENT_COLUMNS} FROM {{ks}}.batch_elements WHERE operation = %s LIMIT {MAX_ROWS}",
            (op_id,),
        )
        return [element_from_row(r) for r in rows]

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
                    f"INSERT INTO {{ks}}.batch_elements ({ELEMENT_COLUMNS}) VALUES (%s, %s, %s, null, '', %s)",
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
        ops = [o for o in await self._all_operations(tenant) if o.status.value in UNFINISHED]
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
        return [e for e in await self._all_elements(tenant, op_id) if e.status in wanted][: row_limit(limit)]

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
            (schedule_id, row_limit(limit)),
        )
        return [
            ScheduleRun(schedule=r[0], due_ms=r[1], replica=r[2], run_ms=r[3], result=r[4] or "")
            for r in rows
        ]
