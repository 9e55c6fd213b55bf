"""SQLite device state store: ``data_dir/state/state-<tenant>.db``, one database per tenant.

``device_state`` keeps one row per device (the state as JSON beside its presence, which is
indexed for the presence listing); ``rules`` one row per rule (JSON). The rules are in
:class:`~fieldgate.cloud.store.state.StateStoreBase`; its ``apply`` reads, merges and writes
here in one ``BEGIN IMMEDIATE`` transaction on the backend's one worker thread, so it is atomic
and order-tolerant.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from fieldgate.cloud.sqlite_worker import transaction
from fieldgate.cloud.store.sqlite.files import TenantFileStore
from fieldgate.cloud.store.state import Change, DeviceState, Presence, StateStoreBase

_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_state (
    device TEXT PRIMARY KEY,
    presence TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS device_state_by_presence ON device_state (presence, device);
CREATE TABLE IF NOT EXISTS rules (
    id TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
"""

_CHUNK = 500  # devices per IN (...) query


class SqliteStateStore(StateStoreBase, TenantFileStore):
    """Implements :class:`fieldgate.cloud.store.state.DeviceStateStore` (module docstring) in
    ``<root>/state-<tenant>.db``: device states, rules, presence intervals."""

    name = "state"
    schema = _SCHEMA
    file_prefix = "state-"

    # ------------------------------------------------------------------ states

    @staticmethod
    def _read(conn: sqlite3.Connection, devices: Sequence[str]) -> dict[str, DeviceState]:
        out: dict[str, DeviceState] = {}
        for i in range(0, len(devices), _CHUNK):
            chunk = devices[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for device, data in conn.execute(
                f"SELECT device, data FROM device_state WHERE device IN ({marks})", chunk
            ):
                out[device] = DeviceState.from_json(data)
        return out

    async def _read_states(self, tenant: str, devices: Sequence[str]) -> dict[str, DeviceState]:
        def run() -> dict[str, DeviceState]:
            conn = self._conn(tenant, create=False)
            return {} if conn is None else self._read(conn, devices)

        return await self._worker.run(run)

    async def _update_states(
        self, tenant: str, devices: Sequence[str], change: Change
    ) -> dict[str, DeviceState]:
        def run() -> dict[str, DeviceState]:
            conn = self._must(tenant)
            with transaction(conn):
                changed = change(self._read(conn, devices))
                conn.executemany(
                    "INSERT INTO device_state (device, presence, data) VALUES (?, ?, ?) "
                    "ON CONFLICT (device) DO UPDATE SET presence = excluded.presence, data = excluded.data",
                    [(m.device, m.presence, m.to_json()) for m in changed.values()],
                )
            return changed

        return await self._worker.run(run)

    async def _states_page(
        self, tenant: str, presence: Presence | None, limit: int, offset: int
    ) -> tuple[list[DeviceState], int] | None:
        def run() -> tuple[list[DeviceState], int] | None:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return None
            where, args = ("WHERE presence = ?", [presence]) if presence else ("", [])
            (total,) = conn.execute(f"SELECT count(*) FROM device_state {where}", args).fetchone()
            rows = conn.execute(
                f"SELECT data FROM device_state {where} ORDER BY device LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
            return [DeviceState.from_json(r[0]) for r in rows], int(total)

        return await self._worker.run(run)

    async def delete_state(self, tenant: str, device: str) -> bool:
        def run() -> bool:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return False
            with transaction(conn):
                return conn.execute("DELETE FROM device_state WHERE device = ?", (device,)).rowcount > 0

        return await self._worker.run(run)

    # ------------------------------------------------------------------ rules

    async def get_rules(self, tenant: str) -> dict[str, str]:
        def run() -> dict[str, str]:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return {}
            return {str(k): str(v) for k, v in conn.execute("SELECT id, data FROM rules ORDER BY id")}

        return await self._worker.run(run)

    async def put_rule(self, tenant: str, rule_id: str, document: str) -> None:
        def run() -> None:
            conn = self._conn(tenant)
            assert conn is not None
            with transaction(conn):
                conn.execute(
                    "INSERT INTO rules (id, data) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                    (rule_id, document),
                )

        await self._worker.run(run)

    async def delete_rule(self, tenant: str, rule_id: str) -> bool:
        def run() -> bool:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return False
            with transaction(conn):
                return conn.execute("DELETE FROM rules WHERE id = ?", (rule_id,)).rowcount > 0

        return await self._worker.run(run)

    async def replace_rules(self, tenant: str, documents: Mapping[str, str]) -> None:
        def run() -> None:
            conn = self._conn(tenant)
            assert conn is not None
            with transaction(conn):
                conn.execute("DELETE FROM rules")
                conn.executemany("INSERT INTO rules (id, data) VALUES (?, ?)", list(documents.items()))

        await self._worker.run(run)
