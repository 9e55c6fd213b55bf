"""The invocation store's interface: command invocations and their status, per tenant."""

from __future__ import annotations

from typing import Protocol

from fieldgate.cloud.store import TenantOwned
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
