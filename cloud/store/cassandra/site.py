"""Site records on Cassandra: component ``site`` of each tenant's keyspace.

Tables:

* ``site_records`` — partition per kind, clustered by token: the record as JSON and its
  reference count ``refs``. Every write of a row is a lightweight transaction: ``INSERT ... IF
  NOT EXISTS`` (a token is unique per tenant even when two replicas create it at once),
  ``UPDATE ... IF EXISTS``, the count by compare-and-set (``IF refs = <read>``, retried), and
  the delete ``IF refs = 0`` — a replica cannot delete a record while another one counts a new
  reference to it (the referrer is stored only after its count was taken).
* ``site_refs`` — partition per referenced record, clustered by referrer: who references it
  (for the message of a refused delete; the count is what decides).
* ``site_elements`` — partition per device group: its elements (kind, token) and their roles.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.store.cassandra.keyspace import PreparedKeyspaces
from fieldgate.cloud.store.cassandra.session import (
    KEYSPACE_PREFIX,
    CassandraSession,
    Migration,
)
from fieldgate.cloud.store.site import MAX_RECORDS, DeleteOutcome, GroupElement, Kind, SiteStoreBase
from fieldgate.cloud.store.validators import valid_tenant

COMPONENT = "site"
_CAS_ATTEMPTS = 50


def _migrations(ks: str) -> list[Migration]:
    """Schema versions of the site tables in a tenant keyspace. Append, never edit."""
    return [
        (
            1,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.site_records ("
                " kind text, tok text, data text, refs int, PRIMARY KEY ((kind), tok))",
                f"CREATE TABLE IF NOT EXISTS {ks}.site_refs ("
                " target_kind text, target text, src_kind text, src text,"
                " PRIMARY KEY ((target_kind, target), src_kind, src))",
                f"CREATE TABLE IF NOT EXISTS {ks}.site_elements ("
                " grp text, kind text, tok text, roles text, PRIMARY KEY ((grp), kind, tok))",
            ],
        )
    ]


def _statements(ks: str) -> dict[str, str]:
    r = f"{ks}.site_records"
    return {
        "insert": f"INSERT INTO {r} (kind, tok, data, refs) VALUES (?, ?, ?, 0) IF NOT EXISTS",
        "get": f"SELECT data FROM {r} WHERE kind = ? AND tok = ?",
        "count": f"SELECT count(*) FROM {r} WHERE kind = ?",
        "all": f"SELECT data FROM {r} WHERE kind = ? LIMIT {MAX_RECORDS}",
        "replace": f"UPDATE {r} SET data = ? WHERE kind = ? AND tok = ? IF EXISTS",
        "refs": f"SELECT refs FROM {r} WHERE kind = ? AND tok = ?",
        "set_refs": f"UPDATE {r} SET refs = ? WHERE kind = ? AND tok = ? IF refs = ?",
        "delete": f"DELETE FROM {r} WHERE kind = ? AND tok = ? IF refs = 0",
        "ref_add": f"INSERT INTO {ks}.site_refs (target_kind, target, src_kind, src) VALUES (?, ?, ?, ?)",
        "ref_del": f"DELETE FROM {ks}.site_refs WHERE target_kind = ? AND target = ? AND src_kind = ? AND src = ?",
        "ref_drop": f"DELETE FROM {ks}.site_refs WHERE target_kind = ? AND target = ? AND src_kind = ? AND src = ?"
        " IF EXISTS",
        "referrers": f"SELECT src_kind, src FROM {ks}.site_refs WHERE target_kind = ? AND target = ? LIMIT ?",
        "el_insert": f"INSERT INTO {ks}.site_elements (grp, kind, tok, roles) VALUES (?, ?, ?, ?) IF NOT EXISTS",
        "el_update": f"UPDATE {ks}.site_elements SET roles = ? WHERE grp = ? AND kind = ? AND tok = ? IF EXISTS",
        "el_delete": f"DELETE FROM {ks}.site_elements WHERE grp = ? AND kind = ? AND tok = ? IF EXISTS",
        "el_all": f"SELECT kind, tok, roles FROM {ks}.site_elements WHERE grp = ? LIMIT {MAX_RECORDS}",
    }


class CassandraSiteStore(SiteStoreBase):
    """Implements :class:`fieldgate.cloud.store.site.SiteStore` (module docstring)."""

    def __init__(
        self,
        session: CassandraSession,
        *,
        keyspace_prefix: str = KEYSPACE_PREFIX,
        replication: int = 1,
        max_concurrency: int = 32,
    ) -> None:
        self._ks = PreparedKeyspaces(
            session,
            COMPONENT,
            what="cassandra site store",
            tenant=(_migrations, _statements),
            keyspace_prefix=keyspace_prefix,
            replication=replication,
            max_concurrency=max_concurrency,
        )

    async def start(self) -> None:
        if not self._ks.started:
            await self._ks.start()

    async def stop(self) -> None:
        await self._ks.stop()

    async def _open(self, tenant: str, *, create: bool = True) -> dict[str, Any] | None:
        if create and not valid_tenant(tenant):
            raise StoreError(f"invalid tenant token {tenant!r}")
        return await self._ks.tenant(tenant, create=create)

    async def _ctx(self, tenant: str) -> dict[str, Any]:
        ctx = await self._open(tenant)
        assert ctx is not None
        return ctx

    async def _run(self, statement: Any, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        return await self._ks.run(statement, params)

    async def _applied(self, statement: Any, params: Sequence[Any]) -> tuple[bool, tuple[Any, ...]]:
        rows = await self._run(statement, params)
        if not rows:
            raise StoreError("cassandra: no answer to a conditional write of a site record")
        return bool(rows[0][0]), tuple(rows[0][1:])

    # --- primitives ----------------------------------------------------------------------------

    async def _insert(self, tenant: str, kind: Kind, token: str, data: str) -> bool:
        ctx = await self._ctx(tenant)
        ((n,),) = await self._run(ctx["count"], (kind,))
        if int(n) >= MAX_RECORDS:
            raise StoreError(f"site: at most {MAX_RECORDS} records of kind {kind} per tenant")
        applied, _ = await self._applied(ctx["insert"], (kind, token, data))
        return applied

    async def _read(self, tenant: str, kind: Kind, token: str) -> str | None:
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return None
        rows = await self._run(ctx["get"], (kind, token))
        return None if not rows else str(rows[0][0])

    async def _all(self, tenant: str, kind: Kind) -> list[str]:
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return []
        return [str(r[0]) for r in await self._run(ctx["all"], (kind,))]

    async def _replace(self, tenant: str, kind: Kind, token: str, data: str) -> bool:
        applied, _ = await self._applied((await self._ctx(tenant))["replace"], (data, kind, token))
        return applied

    async def _add_to_refs(self, ctx: dict[str, Any], kind: Kind, token: str, delta: int) -> bool:
        """Compare-and-set the count; False if the row is absent."""
        rows = await self._run(ctx["refs"], (kind, token))
        if not rows:
            return False
        current = rows[0][0]
        for _ in range(_CAS_ATTEMPTS):
            seen = int(current or 0)
            new = max(seen + delta, 0)
            applied, rest = await self._applied(ctx["set_refs"], (new, kind, token, current))
            if applied:
                return True
            if not rest or rest[0] is None:
                return False  # the row is gone (its count is never null: rows start at 0)
            current = rest[0]
        raise StoreError(f"site: reference count of {kind} {token!r} contended, try again")

    async def _incref(self, tenant: str, kind: Kind, token: str, src: tuple[str, str]) -> bool:
        ctx = await self._ctx(tenant)
        if not await self._add_to_refs(ctx, kind, token, 1):
            return False
        await self._run(ctx["ref_add"], (kind, token, *src))
        return True

    async def _decref(self, tenant: str, kind: Kind, token: str, src: tuple[str, str]) -> None:
        ctx = await self._ctx(tenant)
        await self._add_to_refs(ctx, kind, token, -1)
        await self._run(ctx["ref_del"], (kind, token, *src))

    async def _drop_ref(self, tenant: str, kind: Kind, token: str, src: tuple[str, str]) -> None:
        ctx = await self._ctx(tenant)
        applied, _ = await self._applied(ctx["ref_drop"], (kind, token, *src))
        if applied:  # the one caller that removed the row gives the count back
            await self._add_to_refs(ctx, kind, token, -1)

    async def _delete_row(self, tenant: str, kind: Kind, token: str) -> DeleteOutcome:
        applied, rest = await self._applied((await self._ctx(tenant))["delete"], (kind, token))
        if applied:
            return "deleted"
        return "missing" if not rest or rest[0] is None else "referenced"

    async def _referrers(self, tenant: str, kind: Kind, token: str, limit: int) -> list[tuple[str, str]]:
        rows = await self._run((await self._ctx(tenant))["referrers"], (kind, token, limit))
        return [(str(k), str(t)) for k, t in rows]

    async def _put_element_row(self, tenant: str, group: str, element: GroupElement) -> bool:
        ctx = await self._ctx(tenant)
        roles = json.dumps(list(element.roles))
        applied, _ = await self._applied(ctx["el_insert"], (group, element.kind, element.token, roles))
        if applied:
            return True
        await self._applied(ctx["el_update"], (roles, group, element.kind, element.token))
        return False

    async def _delete_element_row(self, tenant: str, group: str, kind: str, token: str) -> bool:
        applied, _ = await self._applied((await self._ctx(tenant))["el_delete"], (group, kind, token))
        return applied

    async def _element_rows(self, tenant: str, group: str) -> list[GroupElement]:
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return []
        rows = await self._run(ctx["el_all"], (group,))
        out = [
            GroupElement.model_validate({"kind": k, "token": t, "roles": json.loads(r)}) for k, t, r in rows
        ]
        return sorted(out, key=lambda e: (e.kind != "group", e.token))

    # --- tenants -------------------------------------------------------------------------------

    async def ensure_tenant(self, tenant: str) -> None:
        """Create the site tables in the tenant's keyspace now."""
        await self._open(tenant, create=True)

    async def delete_tenant(self, tenant: str) -> bool:
        """Empty the site tables of the tenant (the registry drops its whole keyspace)."""
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return False
        ks = self._ks.keyspace(tenant)
        for table in ("site_records", "site_refs", "site_elements"):
            await self._run(f"TRUNCATE {ks}.{table}")
        return True

    def forget_tenant(self, tenant: str) -> None:
        self._ks.forget(tenant)
