"""The invocation store: command invocations and their status, per tenant.

:class:`InvocationStore` is the interface; :class:`InvocationStoreBase` holds its rules once over
a backend's row primitives (:mod:`fieldgate.cloud.store.sqlite.invocations`,
:mod:`fieldgate.cloud.store.cassandra.invocations`).

Status rules (:func:`next_status`): QUEUED → DELIVERED → ANSWERED, and FAILED / EXPIRED from
QUEUED or DELIVERED. ANSWERED may skip DELIVERED (a device's answer can overtake the edge's
status report). ANSWERED, FAILED, EXPIRED and LATE are final, with one exception: an answer
(ANSWERED) to a FAILED or EXPIRED invocation makes it LATE — the device did answer, after the
edge's response timeout or the time-to-live; the response is kept and ``reason`` still says why
it had failed. LATE is never requested, only derived. An update that would move backwards,
repeat the current state or leave a final state is ignored and the current state returned.

Every move is a compare-and-set on the status that was read (:meth:`InvocationStoreBase._set_if`):
two processes moving, answering or expiring the same invocation change it once, the loser
reads what won and decides again — so an answer racing the edge's timeout ends answered or
late, never lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from fieldgate.cloud.errors import Conflict, InvalidRequest, StoreError
from fieldgate.cloud.store import TenantOwned
from fieldgate.cloud.store.validators import require_tenant, valid_tenant
from fieldgate.timeutil import now_ms
from fieldgate.v1 import services_pb2 as svc


class InvocationStore(TenantOwned, Protocol):
    """Command invocations and their status (queued, delivered, answered, failed, expired, late)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def create(self, inv: svc.InvocationState) -> svc.InvocationState: ...
    async def get(self, tenant: str, invocation_id: str) -> svc.InvocationState | None: ...

    async def update_status(
        self,
        tenant: str,
        invocation_id: str,
        status: svc.CommandStatus.ValueType,
        *,
        reason: str = "",
        response_json: str | None = None,
    ) -> svc.InvocationState | None:
        """Move an invocation forward. Terminal states (answered, failed, expired, late) are
        final, with one exception: ANSWERED on a FAILED or EXPIRED invocation makes it LATE (the
        response is kept, ``reason`` still says why it had failed). An update that would move
        backwards is ignored and the current state returned."""

    async def pending_for_device(self, tenant: str, device: str) -> list[svc.InvocationState]:
        """Invocations still queued for a device, oldest first."""

    async def list_pending(self, tenant: str) -> list[svc.InvocationState]:
        """Every QUEUED invocation of ``tenant``, oldest first."""

    async def expire_due(self, now_ms: int, tenant: str | None = None) -> list[svc.InvocationState]:
        """Mark QUEUED invocations whose ``expires_ms`` has passed EXPIRED; returns them."""

    async def ensure_tenant(self, tenant: str) -> None:
        """Provision the tenant's invocation storage now."""

    async def delete_tenant(self, tenant: str) -> bool:
        """Remove every invocation of the tenant; False if there was none."""

    def forget_tenant(self, tenant: str) -> None:
        """Drop this instance's caches of a tenant another process deleted."""


Status: TypeAlias = svc.CommandStatus.ValueType

QUEUED = svc.COMMAND_STATUS_QUEUED
DELIVERED = svc.COMMAND_STATUS_DELIVERED
ANSWERED = svc.COMMAND_STATUS_ANSWERED
FAILED = svc.COMMAND_STATUS_FAILED
EXPIRED = svc.COMMAND_STATUS_EXPIRED
LATE = svc.COMMAND_STATUS_LATE
_FAILURES = frozenset({FAILED, EXPIRED})
_FINAL = frozenset({ANSWERED, LATE, *_FAILURES})
KNOWN = frozenset({QUEUED, DELIVERED, *_FINAL})
#: What ``update_status`` may be asked for (LATE is derived, never requested).
REQUESTABLE = KNOWN - {LATE}
#: Compare-and-set rounds of one move before giving up (each lost round means another writer
#: moved the invocation forward, and there are only four forward moves).
CAS_ROUNDS = 8
TTL_EXPIRED = "ttl expired"


def next_status(current: Status, requested: Status) -> Status | None:
    """The status an invocation in ``current`` takes when ``requested`` is applied, or None if
    the update is ignored (see the module docstring)."""
    if requested == ANSWERED and current in _FAILURES:
        return LATE
    if current in _FINAL or requested == current or requested == LATE:
        return None
    if requested == QUEUED and current == DELIVERED:
        return None
    return requested


def apply_status(
    inv: svc.InvocationState, requested: Status, reason: str, response_json: str | None, now: int
) -> svc.InvocationState | None:
    """``inv`` moved by ``requested`` (changed in place), or None if the update is ignored. A
    late answer keeps the failure's reason; a response is recorded once, the first."""
    status = next_status(inv.status, requested)
    if status is None:
        return None
    inv.status = status
    if status != LATE:
        inv.reason = reason
    if response_json is not None:
        inv.response_json = response_json
    inv.updated_ms = max(now, inv.updated_ms)
    return inv


def check_requested(status: int) -> None:
    """InvalidRequest unless ``update_status`` may be asked for ``status``."""
    if status not in REQUESTABLE:
        raise InvalidRequest(
            f"unknown command status {status}"
            if status not in KNOWN
            else "LATE is not requested: an answer (ANSWERED) to a failed invocation makes it late"
        )


def _copy(inv: svc.InvocationState) -> svc.InvocationState:
    out = svc.InvocationState()
    out.CopyFrom(inv)
    return out


@dataclass(frozen=True, slots=True)
class Row:
    """A stored invocation as read, with what its backend needs to find the row's queue
    entries again (``key``: Cassandra's ``seq``; None on SQLite)."""

    state: svc.InvocationState
    key: object = None


class InvocationStoreBase:
    """The rules of :class:`InvocationStore` over a backend's primitives (see the module
    docstring). Backends implement the primitives and the tenant lifecycle."""

    # --- primitives (backends; reads of a tenant without storage find nothing) -----------------

    async def _insert(self, inv: svc.InvocationState) -> bool:
        """Store a new invocation (creating the tenant's storage); False if the id is taken."""
        raise NotImplementedError

    async def _read(self, tenant: str, invocation_id: str) -> Row | None:
        raise NotImplementedError

    async def _set_if(self, tenant: str, moves: Sequence[tuple[Row, svc.InvocationState]]) -> list[bool]:
        """For each (row as read, new state): store the new state if the row's status is still
        the one read; whether it was stored."""
        raise NotImplementedError

    async def _queued(self, tenant: str, device: str | None) -> list[Row]:
        """The QUEUED invocations of a device (or the tenant), oldest first."""
        raise NotImplementedError

    async def _due(self, tenant: str, now: int) -> list[Row]:
        """The QUEUED invocations whose non-zero ``expires_ms`` is at most ``now``, oldest first."""
        raise NotImplementedError

    async def _tenants(self) -> list[str]:
        """The tenants that have invocation storage, by token."""
        raise NotImplementedError

    # --- the rules -----------------------------------------------------------------------------

    async def create(self, inv: svc.InvocationState) -> svc.InvocationState:
        """Store a new invocation (status defaults to QUEUED, times to now). Conflict if the
        id exists; InvalidRequest without id, tenant or device."""
        require_tenant(inv.tenant)
        if not inv.id or not inv.device:
            raise InvalidRequest("an invocation needs an id and a device")
        stored = _copy(inv)
        if stored.status == svc.COMMAND_STATUS_UNSPECIFIED:
            stored.status = QUEUED
        if stored.status not in KNOWN:
            raise InvalidRequest(f"unknown command status {stored.status}")
        if not stored.created_ms:
            stored.created_ms = now_ms()
        if not stored.updated_ms:
            stored.updated_ms = stored.created_ms
        if not await self._insert(stored):
            raise Conflict(f"invocation {stored.id!r} already exists")
        return stored

    async def get(self, tenant: str, invocation_id: str) -> svc.InvocationState | None:
        row = await self._read(tenant, invocation_id) if valid_tenant(tenant) else None
        return None if row is None else row.state

    async def update_status(
        self,
        tenant: str,
        invocation_id: str,
        status: svc.CommandStatus.ValueType,
        *,
        reason: str = "",
        response_json: str | None = None,
    ) -> svc.InvocationState | None:
        """Move an invocation forward; None if it does not exist."""
        check_requested(status)
        if not valid_tenant(tenant):
            return None
        for _ in range(CAS_ROUNDS):
            row = await self._read(tenant, invocation_id)
            if row is None:
                return None
            moved = apply_status(_copy(row.state), status, reason, response_json, now_ms())
            if moved is None:
                return row.state
            if (await self._set_if(tenant, [(row, moved)]))[0]:
                return moved
        raise StoreError(f"invocation {invocation_id!r}: status still contended after {CAS_ROUNDS} rounds")

    async def pending_for_device(self, tenant: str, device: str) -> list[svc.InvocationState]:
        """Invocations still QUEUED for ``device``, oldest first."""
        return [r.state for r in await self._queued(tenant, device)] if valid_tenant(tenant) else []

    async def list_pending(self, tenant: str) -> list[svc.InvocationState]:
        """Every QUEUED invocation of ``tenant``, oldest first (e.g. to re-send after a restart)."""
        return [r.state for r in await self._queued(tenant, None)] if valid_tenant(tenant) else []

    async def expire_due(self, now_ms: int, tenant: str | None = None) -> list[svc.InvocationState]:
        """Mark QUEUED invocations whose ``expires_ms`` (non-zero) has passed as EXPIRED
        (reason "ttl expired"), in every tenant or one; returns them. DELIVERED ones are left to
        the edge's response timeout. Two processes sweeping at once expire every invocation
        once between them."""
        tenants = [tenant] if tenant is not None else await self._tenants()
        expired: list[svc.InvocationState] = []
        for t in tenants:
            if not valid_tenant(t):
                continue
            due = await self._due(t, now_ms)
            for _ in range(CAS_ROUNDS):
                if not due:
                    break
                moves = [(row, self._expired(row.state, now_ms)) for row in due]
                won = await self._set_if(t, moves)
                expired.extend(new for (_, new), ok in zip(moves, won, strict=True) if ok)
                # A lost one was moved meanwhile: expire it only if it is still queued and due.
                again = [
                    await self._read(t, row.state.id)
                    for (row, _), ok in zip(moves, won, strict=True)
                    if not ok
                ]
                due = [r for r in again if r is not None and self._is_due(r.state, now_ms)]
        return expired

    @staticmethod
    def _is_due(inv: svc.InvocationState, now: int) -> bool:
        return inv.status == QUEUED and 0 < inv.expires_ms <= now

    @staticmethod
    def _expired(inv: svc.InvocationState, now: int) -> svc.InvocationState:
        out = _copy(inv)
        out.status = EXPIRED
        out.reason = TTL_EXPIRED
        out.updated_ms = max(now, out.updated_ms)
        return out
