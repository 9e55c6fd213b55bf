"""Where the cloud keeps its data: a :class:`StorageBackend` chosen once from the configuration.

``store.kind`` picks the provider, the way bleak picks its platform backend: :func:`storage_backend`
is the one place that looks at it, and every store of a process comes from the provider it
returns — :class:`SqliteBackend` (files in ``data_dir``, the one-machine default) or
:class:`CassandraBackend` (Apache Cassandra: the instance keyspace and each tenant's keyspace).
A provider has one method per store, each returning a new, unstarted store of its backend;
callers never branch on the kind. The Cassandra modules are imported only when chosen: the
default installation never loads the driver.

:class:`CassandraBackend` owns the process's one
:class:`~fieldgate.cloud.store.cassandra.session.CassandraSession`: every store it builds shares
that connection pool (each store starts and stops it; the first start connects, the last stop
disconnects). Another process — or a test playing one — builds a provider of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from fieldgate.cloud.config import CloudConfig
from fieldgate.errors import ConfigError

if TYPE_CHECKING:
    from fieldgate.cloud.store.batch import BatchStore
    from fieldgate.cloud.store.cassandra.session import CassandraSession
    from fieldgate.cloud.store.connectors import ConnectorStore
    from fieldgate.cloud.store.edges import EdgeDirectory
    from fieldgate.cloud.store.events import EventStore
    from fieldgate.cloud.store.invocations import InvocationStore
    from fieldgate.cloud.store.registry import Registry
    from fieldgate.cloud.store.site import SiteStore
    from fieldgate.cloud.store.state import DeviceStateStore
    from fieldgate.cloud.store.users import Hasher, UserStore

__all__ = [
    "TOKEN_SECRET",
    "CassandraBackend",
    "SqliteBackend",
    "StorageBackend",
    "load_or_create_secret",
    "load_previous_secrets",
    "storage_backend",
]

#: The name of the token-signing key among the instance's secrets (Cassandra).
TOKEN_SECRET = "token-signing"


class StorageBackend(Protocol):
    """Builds every store of one backend (see the module docstring). Each call makes a new,
    unstarted store on the same data."""

    @property
    def kind(self) -> Literal["sqlite", "cassandra"]: ...

    def registry(self) -> Registry:
        """Tenants, customer types, customers, device types, devices and assignments."""

    def invocations(self) -> InvocationStore:
        """Command invocations and their status."""

    def events(self, *, tenants: Iterable[str] = ()) -> EventStore:
        """Events; ``tenants`` get their storage provisioned at start (others at their first write)."""

    def users(self, hasher: Hasher) -> UserStore:
        """The API's users, their passwords hashed by ``hasher`` (the user service's policy,
        :class:`fieldgate.cloud.services.users.PasswordHasher`)."""

    def state(self) -> DeviceStateStore:
        """Device states, rules and presence intervals."""

    def site(self) -> SiteStore:
        """Areas, zones, assets and device groups."""

    def edges(self) -> EdgeDirectory:
        """The edge agents ingest has seen."""

    def batch(self) -> BatchStore:
        """Batch operations with their elements, schedules and their runs."""

    def connectors(self) -> ConnectorStore:
        """Connector definitions, positions and dead letters."""

    async def token_secret(self) -> str:
        """The key that signs the REST API's bearer tokens; every ``api`` replica gets the same.

        ``auth.secret_key`` wins; then ``auth.secret_file`` (a file holding the key, e.g. a
        mounted Kubernetes Secret; surrounding whitespace stripped); then a key generated once
        where the store is (the first process's random key is kept; every other one reads it)."""


def storage_backend(config: CloudConfig) -> StorageBackend:
    """The provider ``config.store.kind`` names (the one place that reads it)."""
    if config.store.kind == "cassandra":
        return CassandraBackend(config)
    return SqliteBackend(config)


class _Backend:
    """What both providers share: the configuration and the token secret's precedence."""

    def __init__(self, config: CloudConfig) -> None:
        self.config = config

    async def token_secret(self) -> str:
        auth = self.config.auth
        if auth.secret_key is not None:
            return auth.secret_key.get_secret_value()
        if auth.secret_file is not None:
            return _read_secret_file(auth.secret_file)
        return await self._stored_secret()

    async def _stored_secret(self) -> str:
        raise NotImplementedError


class SqliteBackend(_Backend):
    """SQLite files in ``data_dir`` (docs/operations/storage.md lists them)."""

    @property
    def kind(self) -> Literal["sqlite"]:
        return "sqlite"

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    def registry(self) -> Registry:
        """``data_dir/registry/*.db``."""
        from fieldgate.cloud.store.sqlite.registry import SqliteRegistry

        return SqliteRegistry(self.data_dir / "registry")

    def invocations(self) -> InvocationStore:
        """``data_dir/registry/invocations-<tenant>.db``."""
        from fieldgate.cloud.store.sqlite.invocations import SqliteInvocationStore

        return SqliteInvocationStore(self.data_dir / "registry")

    def events(self, *, tenants: Iterable[str] = ()) -> EventStore:
        """``data_dir/events/events-<tenant>.db`` (a tenant's file is made by its first event)."""
        from fieldgate.cloud.store.sqlite.events import SqliteEventStore

        return SqliteEventStore(self.data_dir / "events")

    def users(self, hasher: Hasher) -> UserStore:
        """``data_dir/users.db``."""
        from fieldgate.cloud.store.sqlite.users import SqliteUsers

        return SqliteUsers(self.data_dir / "users.db", hasher)

    def state(self) -> DeviceStateStore:
        """``data_dir/state/state-<tenant>.db``."""
        from fieldgate.cloud.store.sqlite.state import SqliteStateStore

        return SqliteStateStore(self.data_dir / "state")

    def site(self) -> SiteStore:
        """``data_dir/site/site-<tenant>.db``."""
        from fieldgate.cloud.store.sqlite.site import SqliteSiteStore

        return SqliteSiteStore(self.data_dir / "site")

    def edges(self) -> EdgeDirectory:
        """``data_dir/edges.db``."""
        from fieldgate.cloud.store.sqlite.edges import SqliteEdgeDirectory

        return SqliteEdgeDirectory(self.data_dir / "edges.db")

    def batch(self) -> BatchStore:
        """``data_dir/batch/<tenant>.db``."""
        from fieldgate.cloud.store.sqlite.batch import SqliteBatchStore

        return SqliteBatchStore(self.data_dir / "batch")

    def connectors(self) -> ConnectorStore:
        """``data_dir/connectors/<tenant>.db``."""
        from fieldgate.cloud.store.sqlite.connectors import SqliteConnectorStore

        return SqliteConnectorStore(self.data_dir / "connectors")

    async def _stored_secret(self) -> str:
        """``data_dir/secret.key``."""
        return load_or_create_secret(self.data_dir)


class CassandraBackend(_Backend):
    """Apache Cassandra at ``store.hosts``: the instance keyspace ``<prefix>__instance`` (tenant
    list, users, edges, secrets) and a keyspace per tenant (``<prefix>_<tenant>``), through one
    shared :attr:`session`."""

    def __init__(self, config: CloudConfig) -> None:
        from fieldgate.cloud.store.cassandra.session import CassandraSession

        super().__init__(config)
        store = config.store
        self.session: CassandraSession = CassandraSession(list(store.hosts), store.port)
        self.keyspace_prefix = store.keyspace_prefix
        self.replication = store.replication

    @property
    def kind(self) -> Literal["cassandra"]:
        return "cassandra"

    def registry(self) -> Registry:
        from fieldgate.cloud.store.cassandra.registry import CassandraRegistry

        return CassandraRegistry(
            self.session, keyspace_prefix=self.keyspace_prefix, replication=self.replication
        )

    def invocations(self) -> InvocationStore:
        from fieldgate.cloud.store.cassandra.invocations import CassandraInvocationStore

        return CassandraInvocationStore(
            self.session, keyspace_prefix=self.keyspace_prefix, replication=self.replication
        )

    def events(self, *, tenants: Iterable[str] = ()) -> EventStore:
        from fieldgate.cloud.store.cassandra.events import CassandraEventStore

        return CassandraEventStore(
            self.session,
            keyspace_prefix=self.keyspace_prefix,
            replication=self.replication,
            tenants=tenants,
        )

    def users(self, hasher: Hasher) -> UserStore:
        from fieldgate.cloud.store.cassandra.users import CassandraUsers

        return CassandraUsers(
            self.session, hasher, keyspace_prefix=self.keyspace_prefix, replication=self.replication
        )

    def state(self) -> DeviceStateStore:
        from fieldgate.cloud.store.cassandra.state import CassandraStateStore

        return CassandraStateStore(
            self.session, keyspace_prefix=self.keyspace_prefix, replication=self.replication
        )

    def site(self) -> SiteStore:
        from fieldgate.cloud.store.cassandra.site import CassandraSiteStore

        return CassandraSiteStore(
            self.session, keyspace_prefix=self.keyspace_prefix, replication=self.replication
        )

    def edges(self) -> EdgeDirectory:
        from fieldgate.cloud.store.cassandra.edges import CassandraEdgeDirectory

        return CassandraEdgeDirectory(
            self.session, keyspace_prefix=self.keyspace_prefix, replication=self.replication
        )

    def batch(self) -> BatchStore:
        from fieldgate.cloud.store.cassandra.batch import CassandraBatchStore

        return CassandraBatchStore(
            self.session, keyspace_prefix=self.keyspace_prefix, replication=self.replication
        )

    def connectors(self) -> ConnectorStore:
        from fieldgate.cloud.store.cassandra.connectors import CassandraConnectorStore

        return CassandraConnectorStore(
            self.session, keyspace_prefix=self.keyspace_prefix, replication=self.replication
        )

    async def _stored_secret(self) -> str:
        """Table ``secrets`` of the instance keyspace (stored ``IF NOT EXISTS``)."""
        from fieldgate.cloud.store.cassandra.session import get_or_create_secret

        return await get_or_create_secret(
            self.session,
            TOKEN_SECRET,
            secrets.token_urlsafe(48),
            keyspace_prefix=self.keyspace_prefix,
            replication=self.replication,
        )


def load_previous_secrets(config: CloudConfig) -> list[str]:
    """The previous token-signing keys (``auth.previous_secret_keys`` and the contents of
    ``auth.previous_secret_files``): tokens they signed still verify during a key rotation."""
    auth = config.auth
    keys = [k.get_secret_value() for k in auth.previous_secret_keys]
    if any(not k for k in keys):
        raise ConfigError("auth.previous_secret_keys: a key is empty")
    return keys + [_read_secret_file(p, "auth.previous_secret_files") for p in auth.previous_secret_files]


def _read_secret_file(path: Path, key: str = "auth.secret_file") -> str:
    try:
        secret = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key}: cannot read {path}: {err}") from err
    if not secret:
        raise ConfigError(f"{key}: {path} is empty")
    return secret


def load_or_create_secret(data_dir: Path) -> str:
    """The token-signing secret, generated once and kept (mode 0600) in ``data_dir/secret.key``."""
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(48)
    data_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secret)
    return secret
