"""Exception tree of the cloud services."""

from __future__ import annotations

from fieldgate.errors import FieldgateError


class CloudError(FieldgateError):
    """Base of every error raised by the cloud services."""


class BusError(CloudError):
    """The bus failed to publish, fetch or commit."""


class StoreError(CloudError):
    """An event or registry store operation failed."""


class Unauthenticated(CloudError):
    """The caller's credentials prove nothing: a bearer token that is expired, forged, malformed,
    signed with a key no longer accepted, or whose user was deleted or changed
    (cloud/services/auth.py). REST 401 with ``WWW-Authenticate: Bearer``, gRPC UNAUTHENTICATED."""


class NotFound(CloudError):
    """A named entity (tenant, device, device type, invocation, ...) does not exist."""


class Conflict(CloudError):
    """An entity with that token already exists, or the change conflicts with current state."""


class InUse(Conflict):
    """The entity cannot be deleted while others refer to it (a customer with children or an
    active assignment, a customer type with customers)."""


class Cycle(Conflict):
    """The change would make a tree a cycle (a customer or an area below itself, a device group
    inside itself): a conflict with what is stored, not a malformed request (REST 409, gRPC
    FAILED_PRECONDITION)."""


class InvalidRequest(CloudError):
    """A request is well-formed but not acceptable (e.g. unknown command, wrong parameter type)."""


class UnknownReference(InvalidRequest):
    """A request names another entity that does not exist: a device's type, an assignment's
    device or customer, a customer's type or parent, a presence interval's device type. The
    request (not its target) is wrong: 422 in REST, INVALID_ARGUMENT in gRPC, never 404 (which
    would say the thing the request is about does not exist). ``kind`` and ``token`` name it."""

    def __init__(self, kind: str, token: str, hint: str = "", *, field: str = "") -> None:
        self.kind = kind
        self.token = token[:140]
        self.hint = hint
        where = f"{field}: " if field else ""
        super().__init__(f"{where}{kind} '{self.token}' does not exist" + (f" ({hint})" if hint else ""))

    def at(self, field: str) -> UnknownReference:
        """The same, said of the request's ``field`` (e.g. ``action.command``)."""
        return UnknownReference(self.kind, self.token, self.hint, field=field)
