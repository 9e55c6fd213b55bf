"""Schedules: cron (five fields, UTC, croniter) and one-shot, running a command or a batch.

The runner (inside the ``api`` service, one per replica) looks at every enabled schedule of
every tenant each ``tick_s``. A schedule's *due time* is the latest cron time at or before
now (one shot: ``at_ms`` once it has passed), never one before the schedule was created or
before the last run it recorded — so a one-shot schedule whose ``at_ms`` is before its
creation never runs (it is not "overdue", it was never ahead). A due time runs only after its claim row was created
(:meth:`~fieldgate.cloud.store.batch.BatchStore.claim_run`: unique key on SQLite, LWT on
Cassandra), so with several replicas exactly one of them runs it.

Missed runs: after downtime only the *latest* missed due time runs, once; earlier ones are
skipped (a schedule catching up a night of five-minute runs would flood the devices).

What a run does is idempotent too: a command gets the invocation id derived from (schedule,
due time), a batch the operation id derived from them, so even two runs of one due time
create one invocation or one operation. That is what makes a crash safe: a claim whose run
has no result after ``lease_s`` (its replica died between the claim and the end of the run)
is taken over by the next replica that looks at that due time, which runs the action again —
the derived id turns a second attempt into the first one's result. (A cron schedule whose
next due time has come meanwhile runs that one instead: the latest due time wins.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from croniter import croniter

from fieldgate.cloud.domain.batch import BatchAction, BatchRequest, CommandAction, Schedule, ScheduleRun
from fieldgate.cloud.errors import CloudError, Conflict, NotFound
from fieldgate.cloud.services.batch import BatchOperations, derived_id
from fieldgate.cloud.services.commands import CommandService
from fieldgate.cloud.store.batch import BatchStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms

log = logging.getLogger(__name__)


def _floor(schedule: Schedule) -> int:
    """The earliest due time the schedule may still run: not before its creation, not at or
    before its last run."""
    return max(schedule.created_ms, schedule.last_due_ms + 1 if schedule.last_due_ms is not None else 0)


def due_time(schedule: Schedule, now: int) -> int | None:
    """The due time (ms) to run at ``now``, or None (see the module docstring)."""
    floor = _floor(schedule)
    if schedule.at_ms is not None:
        due = schedule.at_ms
        if due > now or due < floor:
            return None
        return due
    assert schedule.cron is not None
    start = datetime.fromtimestamp(now / 1000, tz=UTC)
    prev: datetime = croniter(schedule.cron, start).get_prev(datetime)
    due = int(prev.timestamp() * 1000)
    return due if due >= floor else None


def next_time(schedule: Schedule, now: int) -> int | None:
    """When the schedule runs next (for the API), or None."""
    if not schedule.enabled:
        return None
    if schedule.at_ms is not None:
        return schedule.at_ms if schedule.at_ms >= _floor(schedule) else None
    assert schedule.cron is not None
    start = datetime.fromtimestamp(now / 1000, tz=UTC)
    nxt: datetime = croniter(schedule.cron, start).get_next(datetime)
    return int(nxt.timestamp() * 1000)


class Scheduler:
    """Runs due schedules exactly once per due time across replicas (module docstring)."""

    def __init__(
        self,
        store: BatchStore,
        registry: Registry,
        commands: CommandService,
        operations: BatchOperations,
        *,
        replica: str = "default",
        tick_s: float = 1.0,
        lease_s: float = 60.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self._registry = registry
        self._commands = commands
        self._operations = operations
        self.replica = replica
        self._tick_s = tick_s
        self._lease_ms = int(lease_s * 1000)
        self._clock = clock
        self._seen: dict[tuple[str, str], int] = {}  # (tenant, schedule) -> latest due handled
        self._task: asyncio.Task[None] | None = None
        self.runs = 0  # due times this replica ran
        self.lost_claims = 0  # due times another replica claimed first
        self.taken_over = 0  # claims of a replica that did not finish, run again here

    def forget_tenant(self, tenant: str) -> None:
        """The tenant was deleted: forget the due times handled for its schedules."""
        for key in [k for k in self._seen if k[0] == tenant]:
            del self._seen[key]

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # task top: log, try again next tick
                log.exception("scheduler: a tick failed; retrying")
            await asyncio.sleep(self._tick_s)

    async def tick(self) -> int:
        """One pass over every tenant's schedules; how many due times this replica ran."""
        ran = 0
        for tenant in await self._registry.list_tenants():
            for schedule in await self.store.list_schedules(tenant.token):
                if schedule.enabled and await self._maybe_run(tenant.token, schedule):
                    ran += 1
        return ran

    async def _maybe_run(self, tenant: str, schedule: Schedule) -> bool:
        now = self._clock()
        due = due_time(schedule, now)
        key = (tenant, schedule.id)
        if due is None or self._seen.get(key, -1) >= due:
            return False
        self._seen[key] = due
        claimed = await self.store.claim_run(
            tenant, ScheduleRun(schedule=schedule.id, due_ms=due, replica=self.replica, run_ms=now)
        )
        if not claimed:
            run = await self.store.get_run(tenant, schedule.id, due)
            if run is None or run.result:
                self.lost_claims += 1
                return False
            if now - run.run_ms < self._lease_ms:
                self._seen.pop(key, None)  # still running elsewhere: look again next tick
                return False
            self.taken_over += 1
            log.warning(
                "tenant %s: schedule %s at %d: replica %s claimed it and did not finish; running it here",
                tenant,
                schedule.id,
                due,
                run.replica,
            )
        result = await self._run(tenant, schedule, due)
        self.runs += 1
        await self.store.finish_run(tenant, schedule.id, due, result)
        current = await self.store.get_schedule(tenant, schedule.id)
        if current is not None and (current.last_due_ms is None or current.last_due_ms < due):
            update: dict[str, object] = {"last_due_ms": due, "last_result": result, "updated_ms": now}
            if current.at_ms is not None:
                update["enabled"] = False  # a one-shot schedule is done
            try:
                await self.store.replace_schedule(tenant, current.model_copy(update=update))
            except NotFound:
                pass  # deleted meanwhile
        return True

    async def _run(self, tenant: str, schedule: Schedule, due: int) -> str:
        action = schedule.action
        initiator = f"schedule:{schedule.id}"
        try:
            if isinstance(action, CommandAction):
                inv_id = derived_id("schedule", tenant, schedule.id, str(due))
                try:
                    state = await self._commands.invoke(
                        tenant,
                        action.device,
                        action.command,
                        dict(action.params),
                        action.ttl_s,
                        initiator,
                        invocation_id=inv_id,
                    )
                    return f"invocation {state.id}"
                except Conflict:
                    return f"invocation {inv_id}"
            assert isinstance(action, BatchAction)
            op_id = derived_id("schedule-batch", tenant, schedule.id, str(due))
            request = BatchRequest(
                command=action.command, params=action.params, ttl_s=action.ttl_s, selection=action.selection
            )
            try:
                op = await self._operations.create(
                    tenant, request, initiator, schedule=schedule.id, op_id=op_id
                )
                return f"batch {op.id}"
            except Conflict:
                return f"batch {op_id}"
        except CloudError as err:  # the action was refused (device gone, bad params): recorded
            log.warning("tenant %s: schedule %s at %d failed: %s", tenant, schedule.id, due, err)
            return f"failed: {err}"
