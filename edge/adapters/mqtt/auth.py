"""Authentication of MQTT clients on the embedded broker: credentials file and enrollment.

:class:`DeviceAuthenticator` turns a CONNECT's username and password into a
:class:`~.acl.Principal` (or a refusal); it knows nothing of amqtt — the broker's access plugin
(:mod:`.auth_plugins`) calls it and keeps the principal of each connection.

- **Identities** come from the credentials file (:mod:`.credentials`), re-read when it changes,
  so ``fieldgate mqtt credentials add|remove`` take effect for the next CONNECT without a
  restart (connections already open keep the rights they logged in with). Passwords are
  checked against argon2id hashes in a worker thread, at most ``max_concurrent_hashes`` at a
  time (each argon2 verification holds 19 MiB), so a connect storm neither blocks the event loop
  nor grows the agent's memory. An unknown username costs the same verification as a known one.
- **Enrollment**: with ``mqtt.auth.enrollment_secrets`` a device of such a tenant that has no
  credentials yet logs in as ``enroll:<tenant>:<device>`` with the tenant's secret. The agent
  makes it an identity of its own (username ``<tenant>/<device>``, a random password), writes it
  to the credentials file at once, and hands the password over when the device subscribes to
  ``fieldgate/<tenant>/devices/<device>/credentials`` (the only thing the enrolling connection
  may do). Until the device has logged in once with that password it may enroll again (a lost
  answer is not fatal); from then on the secret no longer opens that device.
- Refusals are counted in the adapter's stats by reason and logged at most every 10 s.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

from fieldgate.edge.adapters.mqtt.acl import Principal
from fieldgate.edge.adapters.mqtt.credentials import (
    ENROLL_PREFIX,
    CredentialStore,
    Identity,
    generate_password,
    hash_password,
    new_identity,
    verify_password,
)
from fieldgate.edge.adapters.mqtt.stats import MqttStats
from fieldgate.edge.config import MqttAuthConfig
from fieldgate.errors import ConfigError
from fieldgate.protocol import topics
from fieldgate.throttle import LogThrottle

log = logging.getLogger(__name__)

# Enrollment answers waiting for their device to subscribe (bounded: oldest forgotten; the
# device then enrolls again, which its unconfirmed identity allows).
MAX_PENDING_ENROLLMENTS = 1000


@dataclass(frozen=True)
class IssuedCredentials:
    username: str
    password: str

    def payload(self) -> bytes:
        return json.dumps({"username": self.username, "password": self.password}).encode()


def enrolled_username(tenant: str, device: str) -> str:
    return f"{tenant}/{device}"


class DeviceAuthenticator:
    """See the module docstring. One per broker; runs in the agent's event loop."""

    def __init__(
        self,
        config: MqttAuthConfig,
        store: CredentialStore,
        *,
        tenants: Collection[str],
        stats: MqttStats,
        max_concurrent_hashes: int = 2,
    ) -> None:
        self._config = config
        self._store = store
        self._tenants = frozenset(tenants)
        self._stats = stats
        self._hashing = asyncio.Semaphore(max_concurrent_hashes)
        self._writing = asyncio.Lock()
        self._pending: OrderedDict[tuple[str, str], IssuedCredentials] = OrderedDict()
        self._dummy_hash: str | None = None
        self._refused_log = LogThrottle()
        self._reload_log = LogThrottle()

    @property
    def store(self) -> CredentialStore:
        return self._store

    async def authenticate(self, username: str | None, password: str | None) -> Principal | None:
        """The principal of a CONNECT with these credentials, or None (CONNACK not authorized)."""
        if not username:
            if self._config.allow_anonymous:
                self._stats.auth_accepted += 1
                return Principal(username="", unrestricted=True)
            self._refuse("anonymous", "(none)", "no username")
            return None
        if username.startswith(ENROLL_PREFIX):
            return await self._enroll(username, password or "")
        self._reload()
        identity = self._store.get(username)
        if identity is None:
            await self._verify(await self._dummy(), password or "")
            self._refuse("unknown_user", username, "unknown username")
            return None
        if not await self._verify(identity.password_hash, password or ""):
            self._refuse("password", username, "wrong password")
            return None
        if identity.enrolled and not identity.confirmed:
            await self._confirm(identity)
        self._stats.auth_accepted += 1
        return Principal(
            username=identity.username,
            tenant=identity.tenant,
            device=identity.device,
            patterns=identity.devices,
        )

    def take_issued(self, principal: Principal) -> IssuedCredentials | None:
        """The credentials made for an enrolling principal, once (None if already handed over)."""
        if not principal.enrolling:
            return None
        return self._pending.pop((principal.tenant, principal.device), None)

    # ------------------------------------------------------------------------------ internals

    async def _enroll(self, username: str, secret: str) -> Principal | None:
        tenant, sep, device = username[len(ENROLL_PREFIX) :].partition(":")
        expected = self._config.enrollment_secrets.get(tenant)
        if not sep or expected is None or tenant not in self._tenants:
            self._refuse("enrollment", username, f"tenant {tenant!r} does not allow enrollment")
            return None
        if not hmac.compare_digest(secret.encode(), expected.get_secret_value().encode()):
            self._refuse("enrollment", username, "wrong enrollment secret")
            return None
        if not topics.TOKEN_RE.match(device) or ":" in device:
            self._refuse("enrollment", username, f"{device!r} is not a device token usable as a login")
            return None
        async with self._writing:
            self._reload()
            existing = self._store.for_device(tenant, device)
            if existing is not None and (not existing.enrolled or existing.confirmed):
                self._refuse("enrollment", username, f"device {tenant}/{device} has credentials already")
                return None
            issued = IssuedCredentials(enrolled_username(tenant, device), generate_password())
            async with self._hashing:
                identity = await asyncio.to_thread(
                    new_identity, issued.username, tenant, device, issued.password, enrolled=True
                )
            if existing is not None and existing.username != identity.username:
                self._store.remove(existing.username)
            self._store.add(identity, replace=existing is not None)
            await asyncio.to_thread(self._store.save)
        self._pending[(tenant, device)] = issued
        self._pending.move_to_end((tenant, device))
        while len(self._pending) > MAX_PENDING_ENROLLMENTS:
            self._pending.popitem(last=False)
        self._stats.enrollments += 1
        self._stats.auth_accepted += 1
        log.info("MQTT device %s/%s enrolled as %s", tenant, device, issued.username)
        return Principal(username=username, tenant=tenant, device=device, enrolling=True)

    async def _confirm(self, identity: Identity) -> None:
        """First login with enrolled credentials: the enrollment secret no longer opens it."""
        async with self._writing:
            self._reload()
            current = self._store.get(identity.username)
            if current is None or current.confirmed:
                return
            self._store.add(current.model_copy(update={"confirmed": True}), replace=True)
            await asyncio.to_thread(self._store.save)
        self._pending.pop((identity.tenant, identity.device), None)

    async def _verify(self, password_hash: str, password: str) -> bool:
        async with self._hashing:
            return await asyncio.to_thread(verify_password, password_hash, password)

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            async with self._hashing:
                self._dummy_hash = await asyncio.to_thread(hash_password, generate_password())
        return self._dummy_hash

    def _reload(self) -> None:
        try:
            if self._store.reload_if_changed():
                log.info(
                    "MQTT credentials re-read from %s: %d identities", self._store.path, len(self._store)
                )
        except ConfigError as err:
            # Keep the identities in force; an edit in progress or a mistake must not lock out devices.
            if self._reload_log.ready() is not None:
                log.error("MQTT credentials file not re-read, the previous identities stay in force: %s", err)

    def _refuse(self, kind: str, username: str, reason: str) -> None:
        self._stats.count_refused(kind)
        suppressed = self._refused_log.ready()
        if suppressed is not None:
            log.warning(
                "MQTT login refused for %r: %s (%d more refusals since the last report)",
                username,
                reason,
                suppressed,
            )
