"""The edge agent's command router: cloud invocations → the adapter that owns the device.

What it guarantees, and how:

- **On disk first.** Every CommandDown is stored (SQLite, idempotent on the invocation id)
  before QUEUED is reported, so a command survives an agent restart. A re-sent CommandDown
  for a known invocation changes nothing and re-reports its current status.
- **Online → delivered → answered or timed out.** If the owning adapter says the device is
  online the command is handed to it (DELIVERED) and a response deadline of
  ``response_timeout_s`` is armed; the agent calls :meth:`CommandRouter.on_response` when the
  device's command_response event passes through it (and is already durable), which disarms
  it — only if it comes from the device the command was for: another device's answer is
  counted (``stats["responses_refused"]``) and changes nothing here (the cloud refuses to
  link it too). No answer in time → FAILED "timeout". The response itself travels up as an
  event; the cloud marks the invocation ANSWERED (LATE if it comes after the timeout), so the
  edge never reports ANSWERED.
- **Offline → wait on disk.** A command for an offline device waits until the adapter calls
  :meth:`CommandRouter.on_online` for it, or until its ``expires_ms`` passes → EXPIRED.
- **Bounded.** At most ``max_pending`` commands wait or await a response; more are FAILED
  "edge queue full". Finished commands are kept a while (for idempotency) and then pruned.
- **In-flight map.** Active invocations live in a dict keyed by invocation id, each with
  its deadline (expiry or response timeout); one timer task sleeps until the earliest.
- **Status outbox.** Each row keeps the latest status and whether the cloud has confirmed
  seeing it; the uplink resends unconfirmed statuses after a reconnect (see edge/uplink.py).

SQLite work runs on one dedicated thread; commands are rare, so each change is its own
transaction (``synchronous=FULL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

from fieldgate.edge.adapters import Adapter
from fieldgate.edge.config import CommandsConfig
from fieldgate.edge.errors import DeliveryError, EdgeError
from fieldgate.protocol.errors import EncodeError
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc

log = logging.getLogger(__name__)

SendStatus = Callable[[svc.CommandStatusUpdate], Awaitable[None]]
State = Literal["waiting", "delivered", "done"]

# Finished commands are remembered this long (a re-sent CommandDown stays idempotent) …
DONE_RETENTION_MS = 24 * 3600 * 1000
# … but no more than this many times max_pending of them.
DONE_KEEP_FACTOR = 10
PRUNE_INTERVAL_S = 60.0
MAX_UNCONFIRMED_BATCH = 10_000

STATUS_NAMES: dict[int, str] = {
    svc.COMMAND_STATUS_QUEUED: "queued",
    svc.COMMAND_STATUS_DELIVERED: "delivered",
    svc.COMMAND_STATUS_ANSWERED: "answered",
    svc.COMMAND_STATUS_FAILED: "failed",
    svc.COMMAND_STATUS_EXPIRED: "expired",
}


class CommandStoreError(EdgeError):
    """The command router's SQLite file could not be read or written."""


@dataclass(slots=True)
class _Active:
    """An invocation that is waiting for its device or for the device's answer."""

    tenant: str
    device: str
    invocation: pb.CommandInvocation
    state: State
    created_ms: int
    deadline_ms: int  # expiry while waiting (0 = none), response deadline once delivered


class CommandRouter:
    """See the module docstring. Lifecycle: ``await start()`` … ``await stop()``."""

    def __init__(
        self,
        config: CommandsConfig,
        adapters: Sequence[Adapter],
        path: Path,
        send_status: SendStatus,
    ) -> None:
        self._config = config
        self._adapters = list(adapters)
        self._path = path
        self._send_status = send_status
        # Counts of statuses reported (by name) and of answers seen; exported as metrics.
        self.stats: Counter[str] = Counter()
        self._active: dict[str, _Active] = {}
        self._deadlines: list[tuple[int, str]] = []  # heap of (deadline_ms, invocation)
        self._deadline_changed = asyncio.Event()
        self._delivering: set[str] = set()
        self._answered_early: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._timer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def pending(self) -> int:
        """Commands waiting for their device or for its answer."""
        return len(self._active)

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-commands")
        try:
            await self._db(self._open_sync)
            rows = await self._db(self._load_active_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        timeout_ms = int(self._config.response_timeout_s * 1000)
        for inv_id, tenant, device, data, state, created_ms, expires_ms, delivered_ms in rows:
            invocation = pb.CommandInvocation.FromString(data)
            deadline = (delivered_ms or created_ms) + timeout_ms if state == "delivered" else expires_ms
            self._activate(inv_id, _Active(tenant, device, invocation, state, created_ms, deadline))
        if rows:
            log.info("command router: %d pending commands restored from %s", len(rows), self._path)
        self._timer = asyncio.create_task(self._timer_loop(), name="command-router-timer")
        for inv_id, active in list(self._active.items()):
            if active.state == "waiting":
                self._spawn(self._try_deliver(inv_id))

    async def stop(self) -> None:
        """Stop timers and deliveries; pending commands stay on disk for the next start."""
        if self._executor is None:
            return
        tasks = [t for t in (self._timer, *self._tasks) if t is not None]
        await cancel_and_wait(*tasks)
        self._timer = None
        self._tasks.clear()
        self._active.clear()
        self._deadlines.clear()
        try:
            await self._db(self._close_sync)
        finally:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=True)

    # ------------------------------------------------------------------ inputs

    async def on_command(self, down: svc.CommandDown) -> None:
        """A CommandDown from the cloud: store it, report QUEUED, deliver when possible."""
        inv = down.invocation
        inv_id = inv.invocation
        if not inv_id:
            log.warning("command without invocation id for %s/%s ignored", down.tenant, down.device)
            return
        existing = await self._db(self._get_status_sync, inv_id)
        if existing is not None:
            status, reason, status_ms = existing
            log.info("command %s re-sent by the cloud; its status is %s", inv_id, STATUS_NAMES.get(status))
            await self._send_status(self._update(down.tenant, down.device, inv_id, status, reason, status_ms))
            return
        now = now_ms()
        if inv.expires_ms and inv.expires_ms <= now:
            await self._record_final(down, svc.COMMAND_STATUS_EXPIRED, "expired before it reached the edge")
            return
        if len(self._active) >= self._config.max_pending:
            await self._record_final(down, svc.COMMAND_STATUS_FAILED, "edge queue full")
            return
        await self._db(self._insert_sync, down, "waiting", svc.COMMAND_STATUS_QUEUED, "", now)
        self._activate(inv_id, _Active(down.tenant, down.device, inv, "waiting", now, inv.expires_ms))
        await self._report(down.tenant, down.device, inv_id, svc.COMMAND_STATUS_QUEUED, "", now)
        self._spawn(self._try_deliver(inv_id))

    async def on_online(self, tenant: str, device: str) -> None:
        """The device became reachable: deliver its waiting commands, oldest first."""
        waiting = sorted(
            (a.created_ms, inv_id)
            for inv_id, a in self._active.items()
            if a.state == "waiting" and a.tenant == tenant and a.device == device
        )
        if waiting:
            self._spawn(self._deliver_in_order([inv_id for _, inv_id in waiting]))

    async def on_response(self, tenant: str, device: str, invocation: str) -> None:
        """``device`` answered ``invocation`` (its command_response event is already durable).
        An answer from a device the command was not for is counted and ignored."""
        active = self._active.get(invocation)
        if active is not None and (active.tenant, active.device) != (tenant, device):
            self.stats["responses_refused"] += 1
            log.warning(
                "command %s is for %s/%s; the answer of %s/%s does not count",
                invocation,
                active.tenant,
                active.device,
                tenant,
                device,
            )
            return
        self.stats["answered"] += 1
        if invocation in self._delivering:
            self._answered_early.add(invocation)
            return
        if active is None:
            return  # unknown, or already timed out / answered
        self._active.pop(invocation, None)
        await self._db(self._set_state_sync, invocation, "done")

    # ------------------------------------------------------------------ StatusOutbox

    async def unconfirmed_statuses(self) -> list[svc.CommandStatusUpdate]:
        rows: list[tuple[Any, ...]] = await self._db(self._unconfirmed_sync)
        return [self._update(t, d, i, s, r, ms) for i, t, d, s, r, ms in rows]

    async def confirm_statuses(self, keys: Sequence[tuple[str, int]]) -> None:
        await self._db(self._confirm_sync, list(keys))

    # ------------------------------------------------------------------ delivery

    def _adapter_for(self, tenant: str, device: str) -> Adapter | None:
        for adapter in self._adapters:
            if adapter.owns(tenant, device):
                return adapter
        return None

    async def _deliver_in_order(self, inv_ids: list[str]) -> None:
        for inv_id in inv_ids:
            await self._try_deliver(inv_id)

    async def _try_deliver(self, inv_id: str) -> None:
        active = self._active.get(inv_id)
        if active is None or active.state != "waiting" or inv_id in self._delivering:
            return
        adapter = self._adapter_for(active.tenant, active.device)
        if adapter is None:
            await self._finish(inv_id, svc.COMMAND_STATUS_FAILED, "no adapter serves this device")
            return
        if not adapter.is_online(active.tenant, active.device):
            return  # waits on disk for on_online or its expiry
        self._delivering.add(inv_id)
        failure: str | None = None
        try:
            await adapter.send_command(active.tenant, active.device, active.invocation)
        except (DeliveryError, EncodeError) as err:
            failure = str(err) or "delivery failed"
        finally:
            # The device may answer before send_command returns (on_response noted it).
            self._delivering.discard(inv_id)
            answered = inv_id in self._answered_early
            self._answered_early.discard(inv_id)
        if failure is not None and not answered:
            await self._finish(inv_id, svc.COMMAND_STATUS_FAILED, failure)
            return
        now = now_ms()
        state: State = "done"
        if answered:
            self._active.pop(inv_id, None)
        else:
            # In memory before any await, so an answer arriving meanwhile finds it delivered.
            state = active.state = "delivered"
            active.deadline_ms = now + int(self._config.response_timeout_s * 1000)
            self._push_deadline(active.deadline_ms, inv_id)
        await self._db(self._set_status_sync, inv_id, state, svc.COMMAND_STATUS_DELIVERED, "", now, now)
        await self._report(active.tenant, active.device, inv_id, svc.COMMAND_STATUS_DELIVERED, "", now)

    async def _finish(self, inv_id: str, status: int, reason: str) -> None:
        active = self._active.pop(inv_id, None)
        if active is None:
            return
        now = now_ms()
        await self._db(self._set_status_sync, inv_id, "done", status, reason, now, None)
        log.info(
            "command %s for %s/%s: %s %s",
            inv_id,
            active.tenant,
            active.device,
            STATUS_NAMES.get(status),
            reason,
        )
        await self._report(active.tenant, active.device, inv_id, status, reason, now)

    async def _record_final(self, down: svc.CommandDown, status: int, reason: str) -> None:
        """Store a command that ends as soon as it arrives, so a re-send stays idempotent."""
        now = now_ms()
        await self._db(self._insert_sync, down, "done", status, reason, now)
        log.warning(
            "command %s for %s/%s: %s (%s)",
            down.invocation.invocation,
            down.tenant,
            down.device,
            STATUS_NAMES.get(status),
            reason,
        )
        await self._report(down.tenant, down.device, down.invocation.invocation, status, reason, now)

    async def _report(
        self, tenant: str, device: str, inv_id: str, status: int, reason: str, when: int
    ) -> None:
        self.stats[STATUS_NAMES.get(status, "unknown")] += 1
        await self._send_status(self._update(tenant, device, inv_id, status, reason, when))

    @staticmethod
    def _update(
        tenant: str, device: str, inv_id: str, status: int, reason: str, when: int
    ) -> svc.CommandStatusUpdate:
        return svc.CommandStatusUpdate(
            tenant=tenant,
            device=device,
            invocation=inv_id,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            time_ms=when,
        )

    # ------------------------------------------------------------------ deadlines

    def _activate(self, inv_id: str, active: _Active) -> None:
        self._active[inv_id] = active
        if active.deadline_ms:
            self._push_deadline(active.deadline_ms, inv_id)

    def _push_deadline(self, deadline_ms: int, inv_id: str) -> None:
        earliest = self._deadlines[0][0] if self._deadlines else None
        heapq.heappush(self._deadlines, (deadline_ms, inv_id))
        if earliest is None or deadline_ms < earliest:
            self._deadline_changed.set()

    async def _timer_loop(self) -> None:
        """Expire waiting commands and time out delivered ones; prune old finished rows."""
        next_prune = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                self._deadline_changed.clear()
                if loop.time() >= next_prune:
                    next_prune = loop.time() + PRUNE_INTERVAL_S
                    await self._db(self._prune_sync, now_ms())
                now = now_ms()
                while self._deadlines and self._deadlines[0][0] <= now:
                    deadline, inv_id = heapq.heappop(self._deadlines)
                    active = self._active.get(inv_id)
                    if active is None or active.deadline_ms != deadline or inv_id in self._delivering:
                        continue  # stale entry: answered, delivered, or re-armed
                    if active.state == "waiting":
                        await self._finish(
                            inv_id, svc.COMMAND_STATUS_EXPIRED, "time to live passed before delivery"
                        )
                    else:
                        await self._finish(inv_id, svc.COMMAND_STATUS_FAILED, "timeout")
                wait_s = PRUNE_INTERVAL_S
                if self._deadlines:
                    wait_s = min(wait_s, max(0.0, (self._deadlines[0][0] - now_ms()) / 1000))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._deadline_changed.wait()
            except EdgeError as err:  # task top: storage trouble must not stop the timers
                log.error("command router timer: %s", err)
                await asyncio.sleep(1.0)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """Top of every delivery task: storage or adapter trouble is logged and counted."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:
            self.stats["errors"] += 1
            log.error("command router task failed: %s", err, exc_info=err)

    # ------------------------------------------------------------------ SQLite (one thread)

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            raise CommandStoreError("command router is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        assert self._conn is not None
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise CommandStoreError(f"command store {self._path}: {err}") from err

    def _open_sync(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            _migrate(sqlite_utils.Database(conn))
        except sqlite3.Error as err:
            raise CommandStoreError(f"cannot open command store {self._path}: {err}") from err
        self._conn = conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _load_active_sync(self) -> list[tuple[Any, ...]]:
        return self._sql(
            "SELECT invocation, tenant, device, data, state, created_ms, expires_ms, delivered_ms "
            "FROM commands WHERE state != 'done' ORDER BY created_ms"
        )

    def _get_status_sync(self, inv_id: str) -> tuple[int, str, int] | None:
        rows = self._sql("SELECT status, reason, status_ms FROM commands WHERE invocation = ?", (inv_id,))
        return (int(rows[0][0]), str(rows[0][1]), int(rows[0][2])) if rows else None

    def _insert_sync(self, down: svc.CommandDown, state: State, status: int, reason: str, now: int) -> None:
        inv = down.invocation
        self._sql(
            "INSERT OR IGNORE INTO commands (invocation, tenant, device, data, state, status, reason, "
            "status_ms, status_confirmed, created_ms, expires_ms, delivered_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, NULL)",
            (
                inv.invocation,
                down.tenant,
                down.device,
                inv.SerializeToString(),
                state,
                status,
                reason,
                now,
                now,
                inv.expires_ms,
            ),
        )

    def _set_state_sync(self, inv_id: str, state: State) -> None:
        self._sql("UPDATE commands SET state = ? WHERE invocation = ?", (state, inv_id))

    def _set_status_sync(
        self, inv_id: str, state: State, status: int, reason: str, now: int, delivered_ms: int | None
    ) -> None:
        self._sql(
            "UPDATE commands SET state = ?, status = ?, reason = ?, status_ms = ?, status_confirmed = 0, "
            "delivered_ms = coalesce(?, delivered_ms) WHERE invocation = ?",
            (state, status, reason, now, delivered_ms, inv_id),
        )

    def _unconfirmed_sync(self) -> list[tuple[Any, ...]]:
        return self._sql(
            "SELECT invocation, tenant, device, status, reason, status_ms FROM commands "
            "WHERE status_confirmed = 0 ORDER BY status_ms LIMIT ?",
            (MAX_UNCONFIRMED_BATCH,),
        )

    def _confirm_sync(self, keys: list[tuple[str, int]]) -> None:
        assert self._conn is not None
        try:
            self._conn.executemany(
                "UPDATE commands SET status_confirmed = 1 WHERE invocation = ? AND status = ?", keys
            )
        except sqlite3.Error as err:
            raise CommandStoreError(f"command store {self._path}: {err}") from err

    def _prune_sync(self, now: int) -> None:
        self._sql(
            "DELETE FROM commands WHERE state = 'done' AND status_confirmed = 1 AND status_ms < ?",
            (now - DONE_RETENTION_MS,),
        )
        keep = self._config.max_pending * DONE_KEEP_FACTOR
        self._sql(
            "DELETE FROM commands WHERE invocation IN (SELECT invocation FROM commands "
            "WHERE state = 'done' AND status_confirmed = 1 ORDER BY status_ms DESC LIMIT -1 OFFSET ?)",
            (keep,),
        )


def _migrate(db: sqlite_utils.Database) -> None:
    """Create or upgrade the schema (version 1)."""
    db.table("commands").create(
        {
            "invocation": str,
            "tenant": str,
            "device": str,
            "data": bytes,  # serialized pb.CommandInvocation
            "state": str,  # waiting | delivered | done
            "status": int,  # latest CommandStatus reported
            "reason": str,
            "status_ms": int,
            "status_confirmed": int,  # 1 once the cloud has seen the latest status
            "created_ms": int,
            "expires_ms": int,
            "delivered_ms": int,
        },
        pk="invocation",
        not_null={"tenant", "device", "data", "state", "status"},
        if_not_exists=True,
    )
    db.table("commands").create_index(["state"], if_not_exists=True)
    db.table("commands").create_index(["status_confirmed"], if_not_exists=True)
