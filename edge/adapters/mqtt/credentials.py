"""The MQTT credentials file: who may log in to the embedded broker, and as which device.

A YAML file (``mqtt.auth.credentials_file``) with one entry per identity::

    identities:
      - username: thermo-1
        tenant: default
        device: thermo-1                 # the device this identity speaks for
        password_hash: $argon2id$v=19$m=19456,t=2,p=1$...
        mosquitto_hash: $7$20000$...     # the same password for Mosquitto (mosquitto-files)
        devices: []                      # gateways: more devices of the tenant ("sim-*", "*")
        enrolled: false                  # created by auto-enrollment ...
        confirmed: true                  # ... and already logged in with its own password

Passwords are never stored, only hashes: argon2id (argon2-cffi, OWASP's minimum parameters:
19 MiB, 2 passes, 1 lane — verified once per CONNECT, so a connect storm costs the agent CPU
and, per verification in flight, 19 MiB) for the embedded broker, and optionally Mosquitto's own
``$7$`` PBKDF2-SHA512 so that ``fieldgate mqtt mosquitto-files`` can write a Mosquitto password
file from the same identities. Passwords made by ``fieldgate mqtt credentials add`` are 32
random characters (~190 bits), which no hash stretching needs to make up for.

This module does no network I/O and knows nothing of amqtt; the CLI and the broker's
authentication (:mod:`.auth`) both use it. argon2 is imported only when a hash is made or
checked, so an agent without authentication never loads it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from fieldgate.config import Frozen
from fieldgate.errors import ConfigError
from fieldgate.protocol import topics

# OWASP password storage cheat sheet, argon2id minimum configuration.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_PARALLELISM = 1
# Mosquitto verifies on its single thread at every CONNECT; 20k iterations are ~10 ms there
# (mosquitto_passwd itself uses 101). Generated passwords carry their own entropy.
MOSQUITTO_ITERATIONS = 20_000
MOSQUITTO_SALT_BYTES = 12  # what mosquitto_passwd uses
ENROLL_PREFIX = "enroll:"
_HEADER = (
    "# fieldgate MQTT credentials (docs/security.md). Managed with `fieldgate mqtt credentials`;\n"
    "# the edge agent also writes it when a device enrolls. Keep it private (mode 0600).\n"
)


class Identity(Frozen):
    """One login: a device, or a gateway acting for several devices of its tenant."""

    username: str = Field(min_length=1, max_length=256)
    tenant: str
    device: str
    password_hash: str
    mosquitto_hash: str | None = None
    # Gateways: further devices of ``tenant`` this identity may publish for and read commands
    # of — device tokens, or shell-style patterns ("sim-*"; "*" = every device of the tenant).
    devices: tuple[str, ...] = ()
    enrolled: bool = False
    confirmed: bool = True

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if value.startswith(ENROLL_PREFIX):
            raise ValueError(f"usernames starting with {ENROLL_PREFIX!r} are reserved for enrollment")
        if ":" in value or any(c.isspace() or ord(c) < 32 for c in value):
            # Mosquitto's password file is "username:hash", its ACL file "user <name>".
            raise ValueError("must not contain ':', white space or control characters")
        return value

    @field_validator("tenant", "device")
    @classmethod
    def _token(cls, value: str) -> str:
        if not topics.TOKEN_RE.match(value):
            raise ValueError(f"{value!r} is not a valid token (letters, digits, '. _ : -'; up to 128)")
        return value

    @field_validator("devices")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not pattern or "/" in pattern or "+" in pattern or "#" in pattern:
                raise ValueError(f"{pattern!r}: a device token or pattern such as 'sim-*'")
        return value

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: str) -> str:
        if not value.startswith("$argon2id$"):
            raise ValueError("not an argon2id hash (make one with `fieldgate mqtt credentials add`)")
        from argon2 import extract_parameters
        from argon2.exceptions import InvalidHashError

        try:
            extract_parameters(value)
        except InvalidHashError as err:
            raise ValueError("malformed argon2id hash") from err
        return value

    @field_validator("mosquitto_hash")
    @classmethod
    def _mosquitto(cls, value: str | None) -> str | None:
        if value is not None:
            parse_mosquitto_hash(value)
        return value


class CredentialsFile(Frozen):
    identities: tuple[Identity, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> CredentialsFile:
        seen: set[str] = set()
        for identity in self.identities:
            if identity.username in seen:
                raise ValueError(f"username {identity.username!r} appears twice")
            seen.add(identity.username)
        return self


# ---------------------------------------------------------------------------------- hashing


def generate_password() -> str:
    return secrets.token_urlsafe(24)


def _hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher(
        time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM
    )


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (blocking: ~20-50 ms of CPU)."""
    digest: str = _hasher().hash(password)
    return digest


def verify_password(password_hash: str, password: str) -> bool:
    """True if ``password`` matches the argon2id hash (blocking, like :func:`hash_password`)."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return bool(_hasher().verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


def mosquitto_hash(
    password: str, *, iterations: int = MOSQUITTO_ITERATIONS, salt: bytes | None = None
) -> str:
    """Mosquitto 2.x's password file hash: ``$7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>``."""
    salt = secrets.token_bytes(MOSQUITTO_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def parse_mosquitto_hash(value: str) -> tuple[int, bytes, bytes]:
    parts = value.split("$")
    try:
        if len(parts) != 5 or parts[0] or parts[1] != "7":
            raise ValueError
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        digest = base64.b64decode(parts[4], validate=True)
    except ValueError as err:
        raise ValueError("not a Mosquitto $7$ (PBKDF2-SHA512) hash") from err
    if iterations < 1 or len(digest) != 64 or not salt:
        raise ValueError("not a Mosquitto $7$ (PBKDF2-SHA512) hash")
    return iterations, salt, digest


def verify_mosquitto_hash(value: str, password: str) -> bool:
    iterations, salt, digest = parse_mosquitto_hash(value)
    return hmac.compare_digest(hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations), digest)


def new_identity(
    username: str,
    tenant: str,
    device: str,
    password: str,
    *,
    devices: Iterable[str] = (),
    mosquitto: bool = True,
    enrolled: bool = False,
) -> Identity:
    """A validated identity for ``password`` (hashed here; blocking)."""
    try:
        return Identity(
            username=username,
            tenant=tenant,
            device=device,
            password_hash=hash_password(password),
            mosquitto_hash=mosquitto_hash(password) if mosquitto else None,
            devices=tuple(devices),
            enrolled=enrolled,
            confirmed=not enrolled,
        )
    except ValidationError as err:
        raise ConfigError(_format(err, "identity")) from err


# ---------------------------------------------------------------------------------- the file


def _format(err: ValidationError, origin: str) -> str:
    return "; ".join(
        f"{origin}: {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()
    )


class CredentialStore:
    """The identities of one credentials file, by username; re-read when the file changes."""

    def __init__(self, path: Path, identities: Iterable[Identity] = ()) -> None:
        self.path = path
        self._by_user: dict[str, Identity] = {i.username: i for i in identities}
        self._stamp: tuple[int, int] | None = None

    @classmethod
    def load(cls, path: Path, *, missing_ok: bool = False) -> CredentialStore:
        """Read ``path``; a bad file raises :class:`ConfigError` naming the entry and key."""
        store = cls(path)
        if missing_ok and not path.exists():
            return store
        store._read()
        return store

    def _read(self) -> None:
        path = self.path
        try:
            stat = path.stat()
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the MQTT credentials file: {err.strerror}") from err
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: (top level): expected a mapping with 'identities'")
        try:
            parsed = CredentialsFile.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_format(err, str(path))) from err
        self._by_user = {i.username: i for i in parsed.identities}
        self._stamp = (stat.st_mtime_ns, stat.st_size)

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed since it was read (a CLI edit while the agent runs).

        A file that became invalid keeps the identities in force and raises ConfigError.
        """
        try:
            stat = self.path.stat()
        except OSError:
            return False
        if (stat.st_mtime_ns, stat.st_size) == self._stamp:
            return False
        self._read()
        return True

    def save(self) -> None:
        """Write atomically (temporary file + rename), readable by the owner only."""
        body = {"identities": [i.model_dump(mode="json", exclude_defaults=False) for i in self]}
        text = _HEADER + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        stat = self.path.stat()
        self._stamp = (stat.st_mtime_ns, stat.st_size)

    def __iter__(self) -> Iterator[Identity]:
        return iter(sorted(self._by_user.values(), key=lambda i: (i.tenant, i.username)))

    def __len__(self) -> int:
        return len(self._by_user)

    def get(self, username: str) -> Identity | None:
        return self._by_user.get(username)

    def for_device(self, tenant: str, device: str) -> Identity | None:
        """The identity whose own device is ``tenant``/``device`` (gateways' extra devices not counted)."""
        for identity in self._by_user.values():
            if identity.tenant == tenant and identity.device == device:
                return identity
        return None

    def add(self, identity: Identity, *, replace: bool = False) -> None:
        if not replace:
            if identity.username in self._by_user:
                raise ConfigError(f"{self.path}: username {identity.username!r} exists already")
            other = self.for_device(identity.tenant, identity.device)
            if other is not None:
                raise ConfigError(
                    f"{self.path}: device {identity.tenant}/{identity.device} has credentials already "
                    f"(username {other.username!r})"
                )
        self._by_user[identity.username] = identity

    def remove(self, username: str) -> Identity:
        try:
            return self._by_user.pop(username)
        except KeyError:
            raise ConfigError(f"{self.path}: no username {username!r}") from None
