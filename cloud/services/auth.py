"""Bearer tokens of the REST and gRPC APIs: issued on password login, checked on every request.

Transport-neutral: the REST API's dependency and login route (cloud/api/rest/auth.py) and the
gRPC APIs' :class:`~fieldgate.cloud.api.grpc.server.ApiAuth` both use these, and a token that is
not good raises :class:`~fieldgate.cloud.errors.Unauthenticated` (REST 401 with
``WWW-Authenticate: Bearer``, gRPC UNAUTHENTICATED).

Tokens are JWTs signed with HS256. They carry the user (``sub``), the user's tenant
(``tenant``), role (``role``), for customer users customer (``customer``), and the user's
generation (``gen``, cloud/services/users.py); the header names the signing key (``kid``, a hash of
the key, never the key). Every route takes the tenant from the verified token and from nowhere
else — no URL or body can name another tenant; only an instance admin may ask for another
tenant (``X-Fieldgate-Tenant``, cloud/services/access.py).

**Revocation at once** (:class:`UserSessions`): a token is valid until ``exp``
(``auth.token_ttl_s``) *and* only while its user still exists with the generation, tenant,
role and customer the token names — checked on every request (REST in cloud/api/rest/auth.py,
gRPC in cloud/api/grpc/server.py) against the user store, through a per-process cache of at most
:data:`SESSION_CACHE_S` seconds that the process's own user changes clear at once. So a
deleted user, a demoted one, one whose customer or password changed, and every user of a
deleted tenant are refused (401) at once by the replica that made the change and within
``SESSION_CACHE_S`` by every other replica. Tokens from before generations carry none and are
refused: their users log in again.

**Key rotation without downtime**: tokens are signed with the current key and verified with the
current key or any previous one (``auth.previous_secret_keys`` / ``previous_secret_files``).
Make the new key current and the old one previous, wait ``token_ttl_s``, then drop the old one.

**Login throttling** (:class:`LoginThrottle`): after repeated failures for one user name, or
from one client address, logins are refused (REST: 429 with ``Retry-After``) for a window that
doubles with each further failure, up to a cap. The state is per process (a bounded LRU map):
with N ``api`` replicas an attacker gets at most N times the budget, and a restart forgets it.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jwt

from fieldgate.cloud.domain.users import LEGACY_ROLE, UserRecord
from fieldgate.cloud.errors import Unauthenticated
from fieldgate.cloud.services.access import Principal, Role
from fieldgate.cloud.store.users import Users
from fieldgate.timeutil import now_ms

__all__ = ["SESSION_CACHE_S", "LoginThrottle", "TokenAuthority", "UserSessions", "key_id"]

_ALGORITHM = "HS256"
#: How long one process trusts what it read of a user (module docstring, "Revocation at once").
SESSION_CACHE_S = 1.0


def key_id(secret: str) -> str:
    """The ``kid`` of a signing key: 16 hex digits of a domain-separated SHA-256 of it."""
    return hashlib.sha256(b"fieldgate-jwt-kid\0" + secret.encode()).hexdigest()[:16]


class TokenAuthority:
    """Signs tokens with the current key; verifies them with the current or a previous one."""

    def __init__(self, secret: str, ttl_s: int, previous: Sequence[str] = ()) -> None:
        if not secret or any(not p for p in previous):
            raise ValueError("token secrets must not be empty")
        self._secret = secret
        self._kid = key_id(secret)
        self._keys = {key_id(s): s for s in (*previous, secret)}
        self.ttl_s = ttl_s

    def issue(self, principal: Principal, generation: str = "") -> str:
        """A token of ``principal``; ``generation`` is its user's (cloud/services/users.py)."""
        now_s = now_ms() // 1000
        claims: dict[str, object] = {
            "sub": principal.user,
            "tenant": principal.tenant,
            "role": principal.role.value,
            "gen": generation,
            "iat": now_s,
            "exp": now_s + self.ttl_s,
        }
        if principal.customer is not None:
            claims["customer"] = principal.customer
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM, headers={"kid": self._kid})

    def verify(self, token: str) -> Principal:
        """The token's principal (its signature and claims only: :class:`UserSessions` checks
        its user); :class:`~fieldgate.cloud.errors.Unauthenticated` for anything expired,
        forged, malformed, signed with a key that is no longer accepted, or without a role
        (tokens from before roles)."""
        return self.decode(token)[0]

    def decode(self, token: str) -> tuple[Principal, str | None]:
        """:meth:`verify`, and the token's user generation (None: a token from before them)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise Unauthenticated("invalid token (unknown signing key)")
            claims = jwt.decode(
                token, key, algorithms=[_ALGORITHM], options={"require": ["exp", "sub", "tenant", "role"]}
            )
        except jwt.ExpiredSignatureError as err:
            raise Unauthenticated("token expired") from err
        except jwt.PyJWTError as err:
            raise Unauthenticated("invalid token") from err
        user, tenant, role, customer = (claims.get(k) for k in ("sub", "tenant", "role", "customer"))
        if not isinstance(user, str) or not isinstance(tenant, str) or not user or not tenant:
            raise Unauthenticated("invalid token")
        try:
            parsed = Role(str(role))
        except ValueError as err:
            raise Unauthenticated("invalid token (unknown role)") from err
        if (parsed is Role.CUSTOMER) != isinstance(customer, str) or customer == "":
            raise Unauthenticated("invalid token (customer)")
        generation = claims.get("gen")
        principal = Principal(
            user=user, tenant=tenant, role=parsed, customer=customer if isinstance(customer, str) else None
        )
        return principal, generation if isinstance(generation, str) else None


class UserSessions:
    """Whether a token's user still is what the token says (module docstring, "Revocation at
    once"): the user exists, with the token's generation, role, customer and tenant.

    What it read of a user is kept for ``cache_s`` seconds (a bounded LRU map), so a dashboard's
    burst of requests costs one read; :meth:`forget` and :meth:`forget_tenant` drop entries at
    once (this process's own changes), :meth:`tracking` wraps a user store so that its changes
    do. ``users`` None: tokens are checked by signature and claims only (tests of servicers
    that sign tokens for users no store holds)."""

    def __init__(
        self,
        users: Users | None,
        *,
        cache_s: float = SESSION_CACHE_S,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = users
        self._cache_s = cache_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, UserRecord | None]] = OrderedDict()

    async def principal(self, authority: TokenAuthority, token: str) -> Principal:
        """The token's principal if its signature, claims and user hold;
        :class:`~fieldgate.cloud.errors.Unauthenticated` otherwise."""
        who, generation = authority.decode(token)
        if self._users is None:
            return who
        if generation is None:
            raise Unauthenticated("token from before user generations: log in again")
        user = await self._user(who.user)
        if user is None or not _holds(user, who, generation):
            # Read again before refusing: a token issued after a change this cache predates.
            self._entries.pop(who.user, None)
            user = await self._user(who.user)
            if user is None or not _holds(user, who, generation):
                raise Unauthenticated("token revoked: its user was deleted or changed (log in again)")
        return who

    async def _user(self, name: str) -> UserRecord | None:
        now = self._clock()
        entry = self._entries.get(name)
        if entry is not None and now - entry[0] < self._cache_s:
            return entry[1]
        assert self._users is not None
        found = await self._users.get(name)
        self._entries[name] = (now, found)
        self._entries.move_to_end(name)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return found

    def forget(self, user: str) -> None:
        self._entries.pop(user, None)

    def forget_tenant(self, tenant: str) -> None:
        """Drop what is cached of the tenant's users (the tenant was deleted)."""
        for name in [n for n, (_t, u) in self._entries.items() if u is not None and u.tenant == tenant]:
            del self._entries[name]

    def tracking(self, users: Users) -> Users:
        """``users``, with every change of a user also dropping it from this cache."""
        return _TrackedUsers(users, self)


def _holds(user: UserRecord, who: Principal, generation: str) -> bool:
    return (
        user.generation == generation
        and user.role is who.role
        and user.customer == who.customer
        and (not user.tenant or user.tenant == who.tenant)
    )


class _TrackedUsers:
    """A user store whose changes drop the user from a :class:`UserSessions` cache at once."""

    def __init__(self, users: Users, sessions: UserSessions) -> None:
        self._users = users
        self._sessions = sessions

    async def authenticate(self, user: str, password: str) -> UserRecord | None:
        return await self._users.authenticate(user, password)

    async def get(self, user: str) -> UserRecord | None:
        return await self._users.get(user)

    async def list_users(self, tenant: str | None = None) -> list[UserRecord]:
        return await self._users.list_users(tenant)

    async def create(
        self,
        user: str,
        password: str,
        *,
        tenant: str = "default",
        role: Role = LEGACY_ROLE,
        customer: str | None = None,
    ) -> bool:
        try:
            return await self._users.create(user, password, tenant=tenant, role=role, customer=customer)
        finally:
            self._sessions.forget(user)

    async def update(
        self, user: str, *, password: str | None = None, role: Role | None = None, customer: str | None = None
    ) -> UserRecord | None:
        try:
            return await self._users.update(user, password=password, role=role, customer=customer)
        finally:
            self._sessions.forget(user)

    async def delete(self, user: str) -> bool:
        try:
            return await self._users.delete(user)
        finally:
            self._sessions.forget(user)


# --- login throttling ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Failures:
    count: int = 0
    blocked_until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    """Failed logins per key (``user:<name>``, ``addr:<ip>``) in a bounded LRU map.

    ``limit`` failures in a row block the key for ``base_s``; every further failure doubles the
    window, up to ``cap_s``. A key with no failure for ``cap_s`` starts over; a successful login
    clears its user name's key (not the address's: one valid account must not reset the
    address's budget for guessing others)."""

    def __init__(
        self,
        *,
        user_limit: int = 5,
        address_limit: int = 20,
        base_s: float = 1.0,
        cap_s: float = 900.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {"user": user_limit, "addr": address_limit}
        self._base_s, self._cap_s = base_s, cap_s
        self._max_keys = max_keys
        self._clock = clock
        self._entries: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _get(self, key: str, now: float) -> _Failures | None:
        entry = self._entries.get(key)
        if entry is not None and now - entry.last > self._cap_s and now >= entry.blocked_until:
            del self._entries[key]
            return None
        return entry

    def retry_after(self, keys: Sequence[str]) -> float:
        """Seconds until every key may try again (0: now)."""
        now = self._clock()
        waits = [e.blocked_until - now for k in keys if (e := self._get(k, now)) is not None]
        return max([0.0, *waits])

    def failed(self, keys: Sequence[str]) -> None:
        now = self._clock()
        for key in keys:
            entry = self._get(key, now) or _Failures()
            entry.count += 1
            entry.last = now
            over = entry.count - self._limits[key.partition(":")[0]]
            if over >= 0:
                entry.blocked_until = now + min(self._base_s * 2.0**over, self._cap_s)
            self._entries[key] = entry
            self._entries.move_to_end(key)
        while len(self._entries) > self._max_keys:
            self._entries.popitem(last=False)  # the least recently failed key is forgotten

    def succeeded(self, key: str) -> None:
        self._entries.pop(key, None)
