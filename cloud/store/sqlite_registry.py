"""SQLite registry and invocation store (skeleton — implementation in progress)."""

from __future__ import annotations

from pathlib import Path

from fieldgate.cloud.store import Page
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc


class SqliteRegistry:
    """Implements :class:`fieldgate.cloud.store.Registry`."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def ensure_tenant(self, tenant: model.Tenant) -> model.Tenant:
        raise NotImplementedError

    async def get_tenant(self, token: str) -> model.Tenant | None:
        raise NotImplementedError

    async def list_tenants(self) -> list[model.Tenant]:
        raise NotImplementedError

    async def create_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType:
        raise NotImplementedError

    async def get_device_type(self, tenant: str, token: str) -> model.DeviceType | None:
        raise NotImplementedError

    async def list_device_types(self, tenant: str, page: int, page_size: int) -> Page[model.DeviceType]:
        raise NotImplementedError

    async def create_device(self, device: model.Device) -> model.Device:
        raise NotImplementedError

    async def get_device(self, tenant: str, token: str) -> model.Device | None:
        raise NotImplementedError

    async def list_devices(self, tenant: str, page: int, page_size: int) -> Page[model.Device]:
        raise NotImplementedError

    async def create_assignment(self, assignment: model.Assignment) -> model.Assignment:
        raise NotImplementedError

    async def active_assignment(self, tenant: str, device: str) -> model.Assignment | None:
        raise NotImplementedError

    async def list_assignments(
        self, tenant: str, device: str | None, page: int, page_size: int
    ) -> Page[model.Assignment]:
        raise NotImplementedError

    async def release_assignment(self, tenant: str, token: str) -> model.Assignment:
        raise NotImplementedError


class SqliteInvocationStore:
    """Implements :class:`fieldgate.cloud.store.InvocationStore`."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def create(self, inv: svc.InvocationState) -> svc.InvocationState:
        raise NotImplementedError

    async def get(self, tenant: str, invocation_id: str) -> svc.InvocationState | None:
        raise NotImplementedError

    async def update_status(
        self,
        tenant: str,
        invocation_id: str,
        status: svc.CommandStatus.ValueType,
        *,
        reason: str = "",
        response_json: str | None = None,
    ) -> svc.InvocationState | None:
        raise NotImplementedError

    async def pending_for_device(self, tenant: str, device: str) -> list[svc.InvocationState]:
        raise NotImplementedError

    async def list_pending(self, tenant: str) -> list[svc.InvocationState]:
        raise NotImplementedError

    async def expire_due(self, now_ms: int) -> list[svc.InvocationState]:
        raise NotImplementedError
