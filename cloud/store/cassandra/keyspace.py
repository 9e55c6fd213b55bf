"""A small base for stores that keep tables of their own in each tenant's Cassandra keyspace
(batch operations, connectors): the keyspace migrated once per process and tenant through
:class:`PreparedKeyspaces`, like every Cassandra store's — concurrent first callers share one
migration, a failed one is tried again — and statements run with a bounded number in flight.
The Cassandra driver is imported only when a keyspace is first used, so the modules that
subclass this load without it.

The tenant lifecycle (:class:`~fieldgate.cloud.store.TenantOwned`) is here once: ``ensure_tenant``
migrates the component's tables into the keyspace, ``delete_tenant`` empties every table its
``migrations`` create (derived from them, so a table a later migration adds is not forgotten;
never
creating a keyspace that is not there: the registry drops the keyspace itself) and
``forget_tenant`` forgets that the keyspace was migrated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.store.validators import require_tenant, valid_tenant

if TYPE_CHECKING:
    from fieldgate.cloud.store.cassandra.session import CassandraSession


class TenantKeyspaceStore:
    """Subclasses name their ``component`` (its schema version is recorded under that name) and
    the ``migrations`` for a keyspace; statements use ``{ks}`` for the tenant's keyspace. The
    keyspace is opened (migrated once per process and tenant) by :class:`PreparedKeyspaces`,
    like the other Cassandra stores'; these stores' statements are not prepared (they are not
    on a hot path)."""

    component: str

    @staticmethod
    def migrations(ks: str) -> list[tuple[int, list[str]]]:
        raise NotImplementedError

    def __init__(
        self, session: CassandraSession, *, keyspace_prefix: str = "fg", replication: int = 1
    ) -> None:
        self._keyspaces = PreparedKeyspaces(
            session,
            self.component,
            what=f"cassandra {self.component} store",
            tenant=(self.migrations, _no_statements),
            keyspace_prefix=keyspace_prefix,
            replication=replication,
        )

    async def start(self) -> None:
        if not self._keyspaces.started:
            await self._keyspaces.start()

    async def stop(self) -> None:
        await self._keyspaces.stop()

    async def _ks(self, tenant: str) -> str:
        """The tenant's keyspace, migrated once per process (concurrent callers share it)."""
        require_tenant(tenant)
        await self._keyspaces.tenant(tenant, create=True)
        return self._keyspaces.keyspace(tenant)

    async def _run(self, tenant: str, cql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run ``cql`` in the tenant's keyspace. A read (``SELECT``) of a tenant whose keyspace
        does not exist finds nothing and creates nothing: a read for a deleted tenant (a loop
        that has not heard of the deletion yet) must not bring its keyspace back."""
        if cql.lstrip()[:6].upper() == "SELECT":
            if await self._keyspaces.tenant(tenant, create=False) is None:
                return []
            ks = self._keyspaces.keyspace(tenant)
        else:
            ks = await self._ks(tenant)
        return await self._keyspaces.run(cql.replace("{ks}", ks), tuple(params))

    # -- tenant lifecycle ------------------------------------------------------------------

    async def ensure_tenant(self, tenant: str) -> None:
        """Migrate the component's tables into the tenant's keyspace now."""
        await self._ks(tenant)

    async def delete_tenant(self, tenant: str) -> bool:
        """Empty the component's tables of the tenant; False if they held nothing (or it has no
        keyspace)."""
        from fieldgate.cloud.store.cassandra.session import table_names

        if not valid_tenant(tenant):
            return False
        ks = self._keyspaces.keyspace(tenant)
        return await self._keyspaces.empty(tenant, table_names(self.migrations(ks), ks))

    def forget_tenant(self, tenant: str) -> None:
        """Forget that the tenant's keyspace was migrated (it was dropped, or is about to be)."""
        self._keyspaces.forget(tenant)


def _no_statements(ks: str) -> dict[str, str]:
    return {}


class PreparedKeyspaces:
    """A component's tables in the instance keyspace and in each tenant's keyspace, with their
    statements prepared once per process and keyspace: what the registry and the invocation
    store run on their hot paths (a device lookup, an invocation's moves).

    ``instance(name)`` is a prepared statement of the instance keyspace (migrated and prepared
    at :meth:`start`; a component without ``instance`` tables has none, one without ``tenant``
    tables has no tenant statements); ``await tenant(t, create=...)`` the tenant keyspace's statements by name,
    migrated on first use — None when the keyspace does not exist and ``create`` is false (a
    read creates nothing). Concurrent first users of a tenant share one migration.
    """

    def __init__(
        self,
        session: CassandraSession,
        component: str,
        *,
        what: str,
        instance: tuple[Callable[[str], list[tuple[int, list[str]]]], Callable[[str], dict[str, str]]]
        | None = None,
        tenant: tuple[Callable[[str], list[tuple[int, list[str]]]], Callable[[str], dict[str, str]]]
        | None = None,
        keyspace_prefix: str = "fg",
        replication: int = 1,
        max_concurrency: int = 32,
    ) -> None:
        from fieldgate.cloud.store.cassandra.session import instance_keyspace

        self.session = session
        self.prefix = keyspace_prefix
        self._component = component
        self._what = what
        self._instance_schema, self._tenant_schema = instance, tenant
        self._instance_ks = instance_keyspace(keyspace_prefix)
        self._replication = replication
        self._limit = asyncio.Semaphore(max_concurrency)
        self._started = False
        self._inst: dict[str, Any] = {}
        self._tenants: dict[str, dict[str, Any]] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        await self.session.start()
        self._started = True
        if self._instance_schema is None:  # tables in tenant keyspaces only
            return
        try:
            ks = self._instance_ks
            migrations, statements = self._instance_schema
            await self.session.migrate(ks, self._component, migrations(ks), replication=self._replication)
            self._inst = await self.session.prepare(statements(ks), ks)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._tenants.clear()
        await self.session.stop()

    @property
    def started(self) -> bool:
        return self._started

    def instance(self, name: str) -> Any:
        self._check()
        return self._inst[name]

    def keyspace(self, tenant: str) -> str:
        from fieldgate.cloud.store.cassandra.session import keyspace_name

        return keyspace_name(tenant, self.prefix)

    async def tenant(self, tenant: str, *, create: bool) -> dict[str, Any] | None:
        ctx = self._tenants.get(tenant)
        if ctx is not None:
            return ctx
        if not valid_tenant(tenant):
            return None
        ks = self.keyspace(tenant)
        async with self._opening.setdefault(tenant, asyncio.Lock()):
            ctx = self._tenants.get(tenant)
            if ctx is not None:
                return ctx
            self._check()
            if not create and not await self.session.keyspace_exists(ks):
                return None
            if self._tenant_schema is None:
                raise StoreError(f"{self._what} has no tables in a tenant's keyspace")
            migrations, statements = self._tenant_schema
            await self.session.migrate(ks, self._component, migrations(ks), replication=self._replication)
            ctx = await self.session.prepare(statements(ks), ks)
            self._tenants[tenant] = ctx
            return ctx

    async def run(self, statement: Any, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        self._check()
        return await self.session.execute(statement, params, limit=self._limit)

    async def applied(self, statement: Any, params: Sequence[Any]) -> tuple[bool, tuple[Any, ...]]:
        """Run a lightweight transaction: whether it took effect, and the row's current values
        it returned when it did not (empty for a row that does not exist)."""
        rows = await self.run(statement, params)
        if not rows:
            raise StoreError(f"{self._what}: no answer to a conditional write")
        return bool(rows[0][0]), tuple(rows[0][1:])

    def forget(self, tenant: str) -> None:
        """Forget the tenant's statements (its keyspace was dropped, or is about to be)."""
        self._tenants.pop(tenant, None)

    async def drop(self, tenant: str) -> bool:
        """``DROP KEYSPACE`` of the tenant (every component's tables); False if absent."""
        self.forget(tenant)
        if not valid_tenant(tenant):
            return False
        ks = self.keyspace(tenant)
        existed = await self.session.keyspace_exists(ks)
        if existed:
            await self.run(f"DROP KEYSPACE IF EXISTS {ks}")
        self.forget(tenant)
        return existed

    async def empty(self, tenant: str, tables: Sequence[str]) -> bool:
        """Empty ``tables`` of the tenant's keyspace; False if they held nothing (or there is no
        keyspace: nothing is created)."""
        self.forget(tenant)
        if await self.tenant(tenant, create=False) is None:
            return False
        return await self.session.empty_tables(self.keyspace(tenant), tables, limit=self._limit)

    def _check(self) -> None:
        if not self._started:
            raise StoreError(f"{self._what} is not started")
