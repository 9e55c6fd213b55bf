"""What connectors send, and which events they get: the JSON document of an event and the
filter interface. Pure functions, no I/O (the registry lookups a filter needs are done by the
stage and handed in as an :class:`EventContext`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from google.protobuf.json_format import MessageToDict

from fieldgate.cloud.domain.connectors.models import FilterSpec
from fieldgate.v1 import events_pb2 as pb


def event_type(ev: pb.Event) -> str:
    """The payload kind (``measurement``, ``alert``, ...); ``""`` for an event without one."""
    return ev.WhichOneof("payload") or ""


def event_document(ev: pb.Event) -> dict[str, Any]:
    """The JSON object a receiver gets for one event (documented in docs/connectors.md).

    ``id`` is the cloud's event id, derived from (tenant, device, alternate id): the same event
    always has the same id, so it is the idempotency key receivers de-duplicate on.
    """
    kind = event_type(ev)
    doc: dict[str, Any] = {
        "id": ev.id,
        "alternate_id": ev.alternate_id,
        "tenant": ev.tenant,
        "device": ev.device,
        "assignment": ev.assignment,
        "type": kind,
        "event_time_ms": ev.event_time_ms,
        "received_time_ms": ev.received_time_ms,
        "metadata": dict(ev.metadata),
    }
    if kind:
        doc[kind] = MessageToDict(
            getattr(ev, kind), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    return doc


def encode_document(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class EventContext:
    """What the registry says about an event's device and assignment (for filters)."""

    device_type: str = ""
    area: str = ""
    customer: str = ""
    areas: frozenset[str] = frozenset()  # the assignment's area and the areas above it
    groups: frozenset[str] = frozenset()  # of the filter's groups, those the device is in


class EventFilter(Protocol):
    """Decides whether a connector gets an event. ``needs_device``/``needs_assignment`` tell
    the stage which registry lookups :meth:`matches` relies on (none: no lookups at all).
    ``groups`` names the device groups whose membership it reads."""

    @property
    def needs_device(self) -> bool: ...

    @property
    def needs_assignment(self) -> bool: ...

    @property
    def groups(self) -> tuple[str, ...]:
        """The device groups whose membership :meth:`matches` reads (``ctx.groups``)."""
        ...

    def matches(self, ev: pb.Event, ctx: EventContext) -> bool: ...


class FieldFilter:
    """:class:`EventFilter` over a :class:`FilterSpec` (see its docstring for the rules)."""

    def __init__(self, spec: FilterSpec) -> None:
        self.spec = spec
        self._types = frozenset(spec.event_types)
        self._device_types = frozenset(spec.device_types)
        self._areas = frozenset(spec.areas)
        self._customers = frozenset(spec.customers)
        self._groups = frozenset(spec.groups)
        self._patterns = spec.devices

    @property
    def needs_device(self) -> bool:
        return bool(self._device_types)

    @property
    def needs_assignment(self) -> bool:
        return bool(self._areas or self._customers)

    @property
    def groups(self) -> tuple[str, ...]:
        return self.spec.groups

    def matches(self, ev: pb.Event, ctx: EventContext) -> bool:
        if self._types and event_type(ev) not in self._types:
            return False
        if self._patterns and not any(fnmatch.fnmatchcase(ev.device, p) for p in self._patterns):
            return False
        if self._device_types and ctx.device_type not in self._device_types:
            return False
        if self._areas and not (self._areas & (ctx.areas or {ctx.area} - {""})):
            return False
        if self._groups and not (self._groups & ctx.groups):
            return False
        return not (self._customers and (not ctx.customer or ctx.customer not in self._customers))
