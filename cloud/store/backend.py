"""Build the bus, the stores and the token-signing secret the configuration asks for.

The one choice between the one-machine default (embedded SQLite log, SQLite files in
``data_dir``) and the distributed mode (Apache Kafka, Apache Cassandra) lives here, so
``cloud/app.py`` only orchestrates. The Kafka and Cassandra modules are imported only when
chosen: the default installation never loads their client libraries.

On Cassandra every store can be given one :class:`~fieldgate.cloud.store.cassandra.session.CassandraSession`
(``cassandra=``, from :func:`build_cassandra`), so a process holds one connection pool for all
of them; without it each store opens its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fieldgate.cloud.bus import Bus
from fieldgate.cloud.config import CloudConfig
from fieldgate.cloud.store.events import EventStore
from fieldgate.cloud.store.invocations import InvocationStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.store.users import Hasher, UserStore
from fieldgate.errors import ConfigError

if TYPE_CHECKING:
    from fieldgate.cloud.store.cassandra.session import CassandraSession
    from fieldgate.cloud.store.edges import EdgeDirectory
    from fieldgate.cloud.store.site import SiteStore
    from fieldgate.cloud.store.state import DeviceStateStore

#: The name of the token-signing key among the instance's secrets (Cassandra).
TOKEN_SECRET = "token-signing"


def build_bus(config: CloudConfig, *, client_id: str = "fieldgate") -> Bus:
    """The pipeline's bus. ``client_id`` names this process to Kafka (its logs and metrics)."""
    bus = config.bus
    if bus.kind == "kafka":
        from fieldgate.cloud.bus.kafka import KafkaBus

        return KafkaBus(
            bus.bootstrap,
            prefix=bus.topic_prefix,
            partitions=bus.partitions,
            replication=bus.replication,
            client_id=client_id,
            tenants=[t.token for t in config.tenants],
        )
    from fieldgate.cloud.bus.embedded import EmbeddedBus

    return EmbeddedBus(config.data_dir / "bus.db")


def build_event_store(
    config: CloudConfig,
    *,
    tenants: Iterable[str] = (),
    ttl_s_by_tenant: Mapping[str, int] | None = None,
    cassandra: CassandraSession | None = None,
) -> EventStore:
    """The event store. ``tenants`` get their Cassandra keyspace created at start (others on
    their first write); ``ttl_s_by_tenant`` is the per-tenant retention (Cassandra only)."""
    store = config.store
    if store.kind == "cassandra":
        from fieldgate.cloud.store.cassandra.events import CassandraEventStore

        return CassandraEventStore(
            list(store.hosts),
            store.port,
            replication=store.replication,
            ttl_s_by_tenant=ttl_s_by_tenant,
            tenants=tenants,
            keyspace_prefix=store.keyspace_prefix,
            session=cassandra,
        )
    from fieldgate.cloud.store.sqlite.events import SqliteEventStore

    return SqliteEventStore(config.data_dir / "events")


def build_cassandra(config: CloudConfig) -> CassandraSession | None:
    """One Cassandra connection for a process's stores (None unless ``store.kind: cassandra``).
    Each store starts and stops it; the first start connects, the last stop disconnects."""
    if config.store.kind != "cassandra":
        return None
    from fieldgate.cloud.store.cassandra.session import CassandraSession

    return CassandraSession(list(config.store.hosts), config.store.port)


def _session(config: CloudConfig, cassandra: CassandraSession | None) -> CassandraSession:
    session = cassandra or build_cassandra(config)
    assert session is not None
    return session


def build_registry(config: CloudConfig, *, cassandra: CassandraSession | None = None) -> Registry:
    """Tenants, device types, devices and assignments: ``data_dir/registry/*.db`` or Cassandra
    (the instance keyspace's tenant list, the rest in each tenant's keyspace)."""
    store = config.store
    if store.kind == "cassandra":
        from fieldgate.cloud.store.cassandra.registry import CassandraRegistry

        return CassandraRegistry(
            _session(config, cassandra), keyspace_prefix=store.keyspace_prefix, replication=store.replication
        )
    from fieldgate.cloud.store.sqlite.registry import SqliteRegistry

    return SqliteRegistry(config.data_dir / "registry")


def build_invocation_store(
    config: CloudConfig, *, cassandra: CassandraSession | None = None
) -> InvocationStore:
    """Command invocations: ``data_dir/registry/invocations-<tenant>.db`` or Cassandra."""
    store = config.store
    if store.kind == "cassandra":
        from fieldgate.cloud.store.cassandra.invocations import CassandraInvocationStore

        return CassandraInvocationStore(
            _session(config, cassandra), keyspace_prefix=store.keyspace_prefix, replication=store.replication
        )
    from fieldgate.cloud.store.sqlite.invocations import SqliteInvocationStore

    return SqliteInvocationStore(config.data_dir / "registry")


def build_state_store(config: CloudConfig, *, cassandra: CassandraSession | None = None) -> DeviceStateStore:
    """Device states and rules: ``data_dir/state/state-<tenant>.db`` or each tenant's keyspace."""
    store = config.store
    if store.kind == "cassandra":
        from fieldgate.cloud.store.cassandra.state import CassandraStateStore

        return CassandraStateStore(
            _session(config, cassandra), keyspace_prefix=store.keyspace_prefix, replication=store.replication
        )
    from fieldgate.cloud.store.sqlite.state import SqliteStateStore

    return SqliteStateStore(config.data_dir / "state")


def build_edge_directory(config: CloudConfig, *, cassandra: CassandraSession | None = None) -> EdgeDirectory:
    """Edge agents seen by ingest (the dashboard's edges page): ``data_dir/edges.db`` or the
    instance keyspace's ``edges`` table."""
    store = config.store
    if store.kind == "cassandra":
        from fieldgate.cloud.store.cassandra.edges import CassandraEdgeDirectory

        return CassandraEdgeDirectory(
            _session(config, cassandra), keyspace_prefix=store.keyspace_prefix, replication=store.replication
        )
    from fieldgate.cloud.store.sqlite.edges import SqliteEdgeDirectory

    return SqliteEdgeDirectory(config.data_dir / "edges.db")


def build_site_store(config: CloudConfig, *, cassandra: CassandraSession | None = None) -> SiteStore:
    """Areas, zones, assets and device groups: ``data_dir/site/site-<tenant>.db`` or each
    tenant's keyspace (component ``site``)."""
    store = config.store
    if store.kind == "cassandra":
        from fieldgate.cloud.store.cassandra.site import CassandraSiteStore

        return CassandraSiteStore(
            _session(config, cassandra), keyspace_prefix=store.keyspace_prefix, replication=store.replication
        )
    from fieldgate.cloud.store.sqlite.site import SqliteSiteStore

    return SqliteSiteStore(config.data_dir / "site")


def build_users(
    config: CloudConfig, hasher: Hasher, *, cassandra: CassandraSession | None = None
) -> UserStore:
    """The REST API's users: ``data_dir/users.db`` or the instance keyspace; passwords hashed
    by ``hasher`` (the user service's policy, :class:`fieldgate.cloud.services.users.PasswordHasher`)."""
    store = config.store
    if store.kind == "cassandra":
        from fieldgate.cloud.store.cassandra.users import CassandraUsers

        return CassandraUsers(
            _session(config, cassandra),
            hasher,
            keyspace_prefix=store.keyspace_prefix,
            replication=store.replication,
        )
    from fieldgate.cloud.store.sqlite.users import SqliteUsers

    return SqliteUsers(config.data_dir / "users.db", hasher)


async def load_token_secret(config: CloudConfig, *, cassandra: CassandraSession | None = None) -> str:
    """The key that signs the REST API's bearer tokens; every ``api`` replica must get the same.

    ``auth.secret_key`` wins; then ``auth.secret_file`` (a file holding the key, e.g. a mounted
    Kubernetes Secret; surrounding whitespace stripped); then a key generated once where the
    store is: ``data_dir/secret.key`` on SQLite, the instance keyspace on Cassandra (the first
    replica's random key is stored with ``IF NOT EXISTS``; every other replica reads it).
    """
    auth = config.auth
    if auth.secret_key is not None:
        return auth.secret_key.get_secret_value()
    if auth.secret_file is not None:
        return _read_secret_file(auth.secret_file)
    if config.store.kind == "cassandra":
        from fieldgate.cloud.store.cassandra.session import get_or_create_secret

        return await get_or_create_secret(
            _session(config, cassandra),
            TOKEN_SECRET,
            secrets.token_urlsafe(48),
            keyspace_prefix=config.store.keyspace_prefix,
            replication=config.store.replication,
        )
    return load_or_create_secret(config.data_dir)


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
