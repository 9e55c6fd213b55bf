"""Users as every layer sees them: the :class:`Role` a user has, the :class:`UserRecord` the
API shows, the stored :class:`PasswordHash`, and the checks a new user, role or password must
pass (the same for every path that sets one: REST, the admin bootstrap, the stores).

The roles' permissions are the access policy's (:mod:`fieldgate.cloud.services.access`); how a
password is hashed is the user service's (:mod:`fieldgate.cloud.services.users`); the store's
rules over both backends are :class:`fieldgate.cloud.store.users.UserStoreBase`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from fieldgate.cloud.errors import InvalidRequest


class Role(StrEnum):
    INSTANCE_ADMIN = "instance-admin"
    TENANT_ADMIN = "tenant-admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    CUSTOMER = "customer"


USER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # as cloud.config.TenantConfig.token
CUSTOMER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@ -]{0,127}$")
MAX_PASSWORD = 1024
#: Shortest password any path accepts (REST, the admin bootstrap, the stores): NIST SP 800-63B's
#: minimum for a password a person chooses.
MIN_PASSWORD = 8
#: The role of users created without one, and of users stored before roles existed.
LEGACY_ROLE = Role.TENANT_ADMIN


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user as the API shows it (never the hash). ``generation`` is what its tokens must carry
    (:mod:`fieldgate.cloud.store.users`); it does not take part in comparisons."""

    name: str
    tenant: str
    role: Role
    customer: str | None = None
    generation: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A stored hash: an argon2id PHC string, or (legacy) a scrypt digest with its own salt and
    cost parameters."""

    phc: str | None = None
    salt: bytes = b""
    digest: bytes = b""
    n: int = 0
    r: int = 0
    p: int = 0


def check_role(role: Role | str, customer: str | None) -> Role:
    """The role, or InvalidRequest unless ``customer`` fits it (only customer users have one)."""
    try:
        parsed = Role(role)
    except ValueError as err:
        raise InvalidRequest(f"role must be one of {', '.join(r.value for r in Role)}") from err
    if parsed is Role.CUSTOMER:
        if not customer or not CUSTOMER_PATTERN.fullmatch(customer):
            raise InvalidRequest("a customer user needs a customer: 1-128 letters, digits, spaces and _.:@-")
    elif customer is not None:
        raise InvalidRequest("only customer users have a customer")
    return parsed


def check_new_user(
    user: str, password: str, tenant: str, role: Role | str = LEGACY_ROLE, customer: str | None = None
) -> Role:
    """The role, or InvalidRequest unless the user may be stored."""
    if not USER_PATTERN.fullmatch(user):
        raise InvalidRequest("user name must be 1-64 characters: letters, digits and _.@-")
    check_password(password)
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidRequest(f"tenant {tenant[:70]!r} is not a valid tenant token")
    return check_role(role, customer)


def check_password(password: str) -> None:
    """InvalidRequest unless ``password`` may be set (every path that sets one calls this)."""
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidRequest(f"password must be at most {MAX_PASSWORD} characters")
