"""Shared plumbing of the cloud's Cassandra backends (event store, registry, invocations, users).

:class:`CassandraSession` owns one driver ``Cluster``/``Session`` and bridges its
``execute_async`` futures to asyncio (the driver's callback thread resolves an asyncio future
through ``loop.call_soon_threadsafe``). It is reference counted: every store that uses it calls
:meth:`~CassandraSession.start` and :meth:`~CassandraSession.stop`, the first start connects and
the last stop disconnects, so one cloud process can give all its stores one connection pool —
or each store can own a session of its own (tests, tools). A store bounds its own in-flight
requests with a semaphore passed to :meth:`~CassandraSession.execute`, so a store that fans out
thousands of writes never starves another store's lookups of the same session.

Keyspaces: :func:`keyspace_name` maps a tenant token to its keyspace ``<prefix>_<tenant>``;
:func:`instance_keyspace` names the one keyspace of a fieldgate instance (tenant list, users,
token-signing secret), ``<prefix>__instance``, which :func:`keyspace_name` can never produce.
:meth:`CassandraSession.migrate` applies a component's schema versions to a keyspace and records
them in its ``schema_version`` table, so several components (``events``, ``registry``, ...) share
a keyspace without knowing of each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
)
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import tuple_factory

from fieldgate.cloud.errors import CloudError, InvalidRequest, StoreError
from fieldgate.timeutil import now_ms

__all__ = [
    "KEYSPACE_PREFIX",
    "TENANT_RE",
    "CassandraSession",
    "Migration",
    "instance_keyspace",
    "keyspace_name",
    "table_names",
]

log = logging.getLogger(__name__)

KEYSPACE_PREFIX = "fg"
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")  # no "_": keeps keyspace names injective

#: A schema version of one component: (version, CQL statements), applied once, in order.
Migration = tuple[int, list[str]]


def keyspace_name(tenant: str, prefix: str = KEYSPACE_PREFIX) -> str:
    """``<prefix>_<tenant>`` (``fg_<tenant>`` by default), injective: ``_`` → ``__``,
    ``-`` → ``_d`` (the prefix has no ``_``); names past Cassandra's 48-character limit are cut
    and suffixed with a hash of the token."""
    if not TENANT_RE.match(tenant):
        raise InvalidRequest(f"invalid tenant token {tenant!r}")
    check_prefix(prefix)
    body = tenant.replace("_", "__").replace("-", "_d")
    name = f"{prefix}_{body}"
    if len(name) > 48:
        digest = hashlib.sha1(tenant.encode()).hexdigest()[:12]
        name = f"{prefix}_{body[: 32 - len(prefix)].rstrip('_')}_h{digest}"
    return name


def table_names(migrations: Iterable[Migration], keyspace: str) -> tuple[str, ...]:
    """The tables the ``migrations`` create in ``keyspace`` (what a store's ``delete_tenant``
    empties, derived so that a table added by a later migration is not forgotten)."""
    pattern = re.compile(rf"CREATE TABLE IF NOT EXISTS {re.escape(keyspace)}\.(\w+)")
    names: list[str] = []
    for _version, statements in migrations:
        for stmt in statements:
            found = pattern.search(stmt)
            if found and found.group(1) not in names:
                names.append(found.group(1))
    return tuple(names)


def instance_keyspace(prefix: str = KEYSPACE_PREFIX) -> str:
    """``<prefix>__instance``: the instance's own keyspace. A tenant keyspace is the prefix, one
    ``_`` and a body that starts with the token's first character (a letter or digit), so no
    tenant token — not even ``instance`` (``fg_instance``) — maps to a name with ``__`` there."""
    check_prefix(prefix)
    return f"{prefix}__instance"


def check_prefix(prefix: str) -> str:
    if not _PREFIX_RE.match(prefix):
        raise InvalidRequest(f"invalid keyspace prefix {prefix!r}")
    return prefix


class CassandraSession:
    """One driver connection (see the module docstring), started by its first user."""

    def __init__(
        self,
        hosts: str | Sequence[str],
        port: int = 9042,
        *,
        request_timeout_s: float = 20.0,
        connect_timeout_s: float = 30.0,
    ) -> None:
        self._hosts = [hosts] if isinstance(hosts, str) else list(hosts)
        self._port = port
        self._request_timeout_s = request_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._cluster: Any = None
        self._session: Any = None
        self._users = 0
        self._lock = asyncio.Lock()

    @property
    def address(self) -> str:
        return f"{','.join(self._hosts)}:{self._port}"

    async def start(self) -> None:
        """Connect, unless another user of this session already did."""
        async with self._lock:
            if self._users == 0:
                await self._connect()
            self._users += 1

    async def stop(self) -> None:
        """Disconnect when the last user stops."""
        async with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users > 0:
                return
            cluster, self._cluster, self._session = self._cluster, None, None
            if cluster is not None:
                await asyncio.to_thread(cluster.shutdown)

    async def _connect(self) -> None:
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
            serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
            request_timeout=self._request_timeout_s,
            row_factory=tuple_factory,
        )
        cluster = Cluster(
            contact_points=self._hosts,
            port=self._port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=self._connect_timeout_s,
            # The driver's default (2 s) for the control connection's first queries (system
            # tables, schema) fails the connect of a busy or just-started node, while the socket
            # itself is up: give it the request timeout.
            control_connection_timeout=self._request_timeout_s,
        )
        try:
            session = await asyncio.to_thread(cluster.connect)
        except Exception as err:  # the driver raises NoHostAvailable and friends, all plain Exceptions
            await asyncio.to_thread(cluster.shutdown)
            raise StoreError(f"cassandra {self._hosts}:{self._port}: cannot connect: {err}") from err
        session.default_fetch_size = None  # every query of the stores is bounded (LIMIT, one partition)
        self._cluster, self._session = cluster, session

    # ------------------------------------------------------------------ driver bridge

    async def execute(
        self,
        statement: Any,
        params: Sequence[Any] | None = None,
        *,
        limit: asyncio.Semaphore | None = None,
    ) -> list[tuple[Any, ...]]:
        """Execute asynchronously (at most ``limit``'s count in flight); the rows as tuples.
        Driver and server failures become StoreError (transient for the pipeline stages)."""
        if limit is None:
            return await self._execute(statement, params)
        async with limit:
            return await self._execute(statement, params)

    async def _execute(self, statement: Any, params: Sequence[Any] | None) -> list[tuple[Any, ...]]:
        session = self._session
        if session is None:
            raise StoreError("cassandra session is not started")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[tuple[Any, ...]]] = loop.create_future()

        def done(rows: Any) -> None:
            if not fut.done():
                fut.set_result(list(rows) if rows is not None else [])

        def failed(exc: BaseException) -> None:
            if not fut.done():
                fut.set_exception(exc)

        def on_ok(rows: Any) -> None:
            try:
                loop.call_soon_threadsafe(done, rows)
            except RuntimeError:  # loop closed during shutdown
                return

        def on_err(exc: BaseException) -> None:
            try:
                loop.call_soon_threadsafe(failed, exc)
            except RuntimeError:
                return

        try:
            response = session.execute_async(statement, params)
            response.add_callbacks(on_ok, on_err)
            return await fut
        except (CloudError, asyncio.CancelledError):
            raise
        except Exception as err:  # every driver/server failure becomes a StoreError (transient)
            raise StoreError(f"cassandra: {type(err).__name__}: {err}") from err

    @staticmethod
    async def gather(calls: Iterable[Any]) -> list[list[tuple[Any, ...]]]:
        return list(await asyncio.gather(*calls))

    async def prepare(self, texts: Mapping[str, str], what: str) -> dict[str, Any]:
        """Prepare every statement of ``texts`` (name → CQL); the prepared statements by name."""
        session = self._session
        if session is None:
            raise StoreError("cassandra session is not started")
        try:
            prepared = await asyncio.gather(*(asyncio.to_thread(session.prepare, t) for t in texts.values()))
        except Exception as err:  # driver errors are plain Exceptions
            raise StoreError(f"cassandra: cannot prepare statements for {what}: {err}") from err
        return dict(zip(texts, prepared, strict=True))

    # ------------------------------------------------------------------ schema

    async def empty_tables(
        self, keyspace: str, tables: Iterable[str], *, limit: asyncio.Semaphore | None = None
    ) -> bool:
        """``TRUNCATE`` each of ``tables`` that holds a row (an empty one is left alone: a
        truncate costs a flush on every replica); whether any held one."""
        had = False
        for table in tables:
            if await self.execute(f"SELECT * FROM {keyspace}.{table} LIMIT 1", limit=limit):
                await self.execute(f"TRUNCATE {keyspace}.{table}", limit=limit)
                had = True
        return had

    async def keyspace_exists(self, keyspace: str) -> bool:
        rows = await self.execute(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)
        )
        return bool(rows)

    async def migrate(
        self, keyspace: str, component: str, migrations: Iterable[Migration], *, replication: int
    ) -> None:
        """Create ``keyspace`` if needed and apply ``component``'s versions not recorded in its
        ``schema_version`` table (statements are ``IF NOT EXISTS``: two processes migrating at
        the same time is harmless)."""
        await self.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication ="
            f" {{'class': 'SimpleStrategy', 'replication_factor': {int(replication)}}}"
        )
        await self.execute(
            f"CREATE TABLE IF NOT EXISTS {keyspace}.schema_version ("
            " component text, version int, applied_ms bigint, PRIMARY KEY (component, version))"
        )
        rows = await self.execute(
            f"SELECT version FROM {keyspace}.schema_version WHERE component = %s", (component,)
        )
        applied = {int(r[0]) for r in rows}
        for version, statements in migrations:
            if version in applied:
                continue
            for stmt in statements:
                await self.execute(stmt)
            await self.execute(
                f"INSERT INTO {keyspace}.schema_version (component, version, applied_ms) VALUES (%s, %s, %s)",
                (component, version, now_ms()),
            )
            log.info("cassandra: keyspace %s: %s migrated to schema version %d", keyspace, component, version)


def _secret_migrations(ks: str) -> list[Migration]:
    return [(1, [f"CREATE TABLE IF NOT EXISTS {ks}.secrets (name text PRIMARY KEY, value text)"])]


async def get_or_create_secret(
    session: CassandraSession,
    name: str,
    candidate: str,
    *,
    keyspace_prefix: str = KEYSPACE_PREFIX,
    replication: int = 1,
) -> str:
    """The instance's secret ``name``: ``candidate`` if this call stored it first
    (``INSERT ... IF NOT EXISTS``), else the value another process stored — so every replica
    that asks ends up with the first one's value."""
    ks = instance_keyspace(keyspace_prefix)
    await session.start()
    try:
        await session.migrate(ks, "secret", _secret_migrations(ks), replication=replication)
        rows = await session.execute(
            f"INSERT INTO {ks}.secrets (name, value) VALUES (%s, %s) IF NOT EXISTS", (name, candidate)
        )
        if not rows:
            raise StoreError(f"cassandra: no answer to the insert of secret {name!r}")
        applied, *current = rows[0]
        if applied:
            return candidate
        # Not applied: the row returned is the stored one ([applied], name, value).
        return str(current[-1])
    finally:
        await session.stop()
