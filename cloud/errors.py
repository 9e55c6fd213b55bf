"""Exception tree of the cloud services."""

from __future__ import annotations

from fieldgate.errors import FieldgateError


class CloudError(FieldgateError):
    """Base of every error raised by the cloud services."""


class BusError(CloudError):
    """The bus failed to publish, fetch or commit."""


class StoreError(CloudError):
    """An event or registry store operation failed."""


class NotFound(CloudError):
    """A named entity (tenant, device, device type, invocation, ...) does not exist."""


class Conflict(CloudError):
    """An entity with that token already exists, or the change conflicts with current state."""


class InUse(Conflict):
    """The entity cannot be deleted while others refer to it (a customer with children or an
    active assignment, a customer type with customers)."""


class InvalidRequest(CloudError):
    """A request is well-formed but not acceptable (e.g. unknown command, wrong parameter type)."""
