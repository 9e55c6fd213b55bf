"""The cloud's deterministic event id: the one implementation every stage and store uses.

The contract (DESIGN.md, "Alternate ids"): an event's cloud id is
``uuid5(NAMESPACE_URL, f"{tenant}/{device}/{alternate_id}").hex``, so every retry of an event
gets the same id and the event store can refuse to store it twice. Inbound processing stamps
the id on each event; the event store derives its 16-byte uniqueness key from the same
function. Keeping both in one module means they cannot drift apart.

This runs once per event in two stages, so it avoids building ``uuid.UUID`` objects (about
three times slower) and lets a caller hash the shared ``"<tenant>/<device>/"`` prefix once per
device (:class:`DeviceIds`) instead of once per event.
"""

from __future__ import annotations

import hashlib
import uuid

from fieldgate.cloud.errors import InvalidRequest
from fieldgate.v1 import events_pb2 as pb

_NAMESPACE = uuid.NAMESPACE_URL.bytes


def _stamp(digest: bytes) -> bytes:
    """The first 16 bytes of a SHA-1 digest with the uuid5 version and RFC 4122 variant bits."""
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return bytes(raw)


def event_key(tenant: str, device: str, alternate_id: str) -> bytes:
    """The 16 bytes of the event id (the event store's uniqueness key)."""
    return _stamp(hashlib.sha1(_NAMESPACE + f"{tenant}/{device}/{alternate_id}".encode()).digest())


def event_id(tenant: str, device: str, alternate_id: str) -> str:
    """The cloud id of an event: the same for every retry of it (the alternate id is the key)."""
    return event_key(tenant, device, alternate_id).hex()


class DeviceIds:
    """Event keys of one device's events: the namespace and ``"<tenant>/<device>/"`` are hashed
    once, each event only adds its alternate id (a copy of the hash state)."""

    __slots__ = ("_prefix",)

    def __init__(self, tenant: str, device: str) -> None:
        self._prefix = hashlib.sha1(_NAMESPACE + f"{tenant}/{device}/".encode())

    def key(self, alternate_id: str) -> bytes:
        h = self._prefix.copy()
        h.update(alternate_id.encode())
        return _stamp(h.digest())

    def id(self, alternate_id: str) -> str:
        return self.key(alternate_id).hex()


def completed_event(tenant: str, event: pb.Event) -> pb.Event:
    """``event`` as an event store keeps it: tenant, alternate id and id filled in (a copy when
    anything changes; the event itself when nothing does). Raises InvalidRequest for an event of
    another tenant or without a device."""
    if event.tenant == tenant and event.id and event.alternate_id and event.device:
        return event
    if event.tenant and event.tenant != tenant:
        raise InvalidRequest(f"event of tenant {event.tenant!r} given to tenant {tenant!r}")
    if not event.device:
        raise InvalidRequest("event without a device")
    out = pb.Event()
    out.CopyFrom(event)
    out.tenant = tenant
    if not out.alternate_id:
        out.alternate_id = out.id or uuid.uuid4().hex
    if not out.id:
        out.id = event_id(tenant, out.device, out.alternate_id)
    return out
