"""Users: the hashing policy the user stores are given, and the names the API imports.

Passwords are hashed with **argon2id** (argon2-cffi; OWASP's parameters m=19 MiB, t=2, p=1,
stored in the PHC string with each hash, so they can be raised later: a hash with older
parameters is re-hashed at the next successful login). Users created before argon2 have a
``hashlib.scrypt`` hash (salt and cost in their own columns); it still verifies, and the first
successful login replaces it with an argon2id hash. Verifying an unknown user costs the same
argon2 run as a known one, so response time does not reveal which user names exist.

The store — its rules (roles, create-if-absent, the generation tokens carry, the re-hash at
login) and its two backends — is :mod:`fieldgate.cloud.store.users`; each store is built with a
:class:`PasswordHasher` (``StorageBackend.users``). The user model and its checks are the
domain's (:mod:`fieldgate.cloud.domain.users`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from fieldgate.cloud.domain.users import PasswordHash

# Legacy scrypt cost (verification only now): n=2**14, r=8 → 16 MiB.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _DKLEN = 2**14, 8, 1, 32
_MAXMEM = 64 * 1024 * 1024
# argon2id, OWASP Password Storage Cheat Sheet: m=19 MiB, t=2, p=1 (~60 ms on a small machine).
ARGON2_TIME_COST, ARGON2_MEMORY_KIB, ARGON2_PARALLELISM = 2, 19456, 1


def scrypt_hash(password: str, salt: bytes | None = None) -> PasswordHash:
    """A legacy scrypt hash (what stores wrote before argon2; kept to test the upgrade path)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return PasswordHash(None, salt, digest, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_DKLEN)


class PasswordHasher:
    """argon2id hashing, verification of argon2id and legacy scrypt hashes, and the decision
    to re-hash (blocking: call it from a worker thread); a
    :class:`fieldgate.cloud.store.users.Hasher`. An unknown user (``stored`` None) is checked
    against a dummy hash, so that it costs the same argon2 run as a known one."""

    def __init__(self) -> None:
        self._argon2 = argon2.PasswordHasher(
            time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM
        )
        self._dummy: str | None = None  # computed on first use

    def hash(self, password: str) -> PasswordHash:
        return PasswordHash(phc=self._argon2.hash(password))

    def verify(self, password: str, stored: PasswordHash | None) -> tuple[bool, bool]:
        """(the password matches, the stored hash should be replaced by :meth:`hash`)."""
        if stored is None:
            if self._dummy is None:
                self._dummy = self._argon2.hash(secrets.token_urlsafe(16))
            self._check_argon2(self._dummy, password)
            return False, False
        if stored.phc:
            if not self._check_argon2(stored.phc, password):
                return False, False
            return True, self._argon2.check_needs_rehash(stored.phc)
        if not stored.salt or not stored.n:
            return False, False
        ok = hmac.compare_digest(_scrypt(password, stored.salt, stored.n, stored.r, stored.p), stored.digest)
        return ok, ok

    def _check_argon2(self, phc: str, password: str) -> bool:
        try:
            return self._argon2.verify(phc, password)
        except (VerificationError, InvalidHashError):
            return False
