"""What only the SQLite registry and invocation store promise: their files in ``data_dir``.

The behaviour both backends share (CRUD, conflicts, tenants, orders, paging, status rules) is
tested on each in tests/contract/test_registry_contract.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldgate.cloud.errors import NotFound
from fieldgate.cloud.store.sqlite.invocations import SqliteInvocationStore
from fieldgate.cloud.store.sqlite.registry import SqliteRegistry
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc


def files(path: Path) -> set[str]:
    return {p.name for p in path.glob("*.db")}


async def test_a_database_per_tenant_and_none_for_reads(tmp_path: Path) -> None:
    registry = SqliteRegistry(tmp_path)
    invocations = SqliteInvocationStore(tmp_path)
    await registry.start()
    await invocations.start()
    try:
        await registry.ensure_tenant(model.Tenant(token="acme"))
        await registry.create_device_type("acme", model.DeviceType(token="sensor"))
        await invocations.create(svc.InvocationState(id="i", tenant="acme", device="d"))
        assert files(tmp_path) == {"tenants.db", "registry-acme.db", "invocations-acme.db"}
        # Reads of a tenant that never stored anything leave no file behind.
        assert await registry.get_device("globex", "d") is None
        assert (await registry.list_assignments("globex", None, 1, 10)).total == 0
        assert await invocations.get("globex", "i") is None
        assert await invocations.list_pending("globex") == []
        assert await invocations.expire_due(10**13) == []
        assert files(tmp_path) == {"tenants.db", "registry-acme.db", "invocations-acme.db"}
    finally:
        await invocations.stop()
        await registry.stop()


async def test_a_write_never_brings_a_deleted_tenant_back(tmp_path: Path) -> None:
    """The tenant check of a write runs in the write's worker job: a tenant deleted after this
    instance last saw it (here by another instance on the same files; in one process, between
    the check and the write) gets NotFound, not an empty ``registry-<tenant>.db`` again."""
    one, other = SqliteRegistry(tmp_path), SqliteRegistry(tmp_path)
    await one.start()
    await other.start()
    try:
        await one.ensure_tenant(model.Tenant(token="acme"))
        await one.create_device_type("acme", model.DeviceType(token="sensor"))
        assert await other.delete_tenant("acme")
        with pytest.raises(NotFound):
            await one.create_device(model.Device(token="d1", tenant="acme", device_type="sensor"))
        with pytest.raises(NotFound):
            await one.create_assignment(model.Assignment(tenant="acme", device="d1"))
        assert files(tmp_path) == {"tenants.db"}
    finally:
        await other.stop()
        await one.stop()


async def test_tenant_tokens_cannot_name_files_outside_data_dir(tmp_path: Path) -> None:
    invocations = SqliteInvocationStore(tmp_path / "registry")
    await invocations.start()
    try:
        assert await invocations.update_status("../x", "i", svc.COMMAND_STATUS_DELIVERED) is None
        assert await invocations.pending_for_device("../x", "d") == []
    finally:
        await invocations.stop()
    assert not any(tmp_path.rglob("*x.db"))  # noqa: ASYNC240
