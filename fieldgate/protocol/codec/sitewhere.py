"""SiteWhere's JSON device messages → protobuf events, so firmware written for SiteWhere works
unchanged when it publishes to ``SiteWhere/<tenant>/input/json``.

SiteWhere's JSON decoder takes one *device request*::

    {"deviceToken": "..", "originator": "..", "type": "DeviceMeasurement",
     "request": {"name": "temp", "value": 21.5, "eventDate": "2024-01-01T00:00:00Z",
                 "alternateId": "..", "metadata": {..}, "updateState": false}}

with ``type`` one of RegisterDevice, DeviceMeasurement, DeviceLocation, DeviceAlert,
Acknowledge (a command acknowledgement), DeviceStream, DeviceStreamData. SiteWhere 1.x also sent
DeviceMeasurements (``request.measurements: {name: value}``) and named the device
``hardwareId``; its batch decoder took ``{"deviceToken": .., "measurements": [..],
"locations": [..], "alerts": [..]}``. All of these are accepted here; the two stream types are
refused with a reason (fieldgate has no device streams).

Mapping onto fieldgate's events (docs/protocols/mqtt.md lists it for device authors):

- ``request.alternateId`` → ``alternate_id`` (the idempotency key). The top-level
  ``originator`` is *not* an event id: SiteWhere sets it to the command invocation that caused
  the message, so several events can share it. It is kept as metadata ``originator`` and, for
  Acknowledge, used as the invocation when ``originatingEventId`` is missing.
- ``eventDate`` (ISO 8601 or epoch ms) → ``event_time_ms``; absent means "when received".
- RegisterDevice → a REGISTRATION state change, ``current`` = ``deviceTypeToken`` (empty: the
  tenant's default device type); area/customer/asset tokens travel as metadata.
- Acknowledge → a command response to ``originatingEventId`` with ``{"message": response}``.
- ``updateState`` and other unknown fields are ignored, as SiteWhere's own decoder tolerates.

Where SiteWhere's Jackson mapper is lenient (numbers sent as strings, case of enum names,
numbers in metadata) this codec is too; everything else is validated like fieldgate's JSON.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import orjson

from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.protocol.codec.json_events import (
    MAX_EVENTS,
    alternate_id,
    check_event_count,
    check_latitude,
    check_longitude,
    event_time,
    field_name,
    json_type,
    load_json,
    metadata,
    short,
)
from fieldgate.protocol.topics import TOKEN_RE
from fieldgate.v1 import events_pb2 as pb

__all__ = ["SITEWHERE_TYPES", "decode_sitewhere"]

SITEWHERE_TYPES = (
    "DeviceMeasurement",
    "DeviceMeasurements",
    "DeviceLocation",
    "DeviceAlert",
    "RegisterDevice",
    "Acknowledge",
)
_E = TypeVar("_E", bound=int)
_UNSUPPORTED = ("DeviceStream", "DeviceStreamData", "SendDeviceStreamData", "MapDevice")

_LEVELS: dict[str, pb.AlertLevel.ValueType] = {
    "info": pb.ALERT_LEVEL_INFO,
    "warning": pb.ALERT_LEVEL_WARNING,
    "error": pb.ALERT_LEVEL_ERROR,
    "critical": pb.ALERT_LEVEL_CRITICAL,
}
_SOURCES: dict[str, pb.AlertSource.ValueType] = {
    "device": pb.ALERT_SOURCE_DEVICE,
    "system": pb.ALERT_SOURCE_SYSTEM,
}
# Registration fields that have no fieldgate counterpart yet; kept as event metadata.
_REGISTRATION_METADATA = ("areaToken", "customerToken", "assetToken", "parentDeviceToken", "comments")


def _number(value: object, field: str) -> float:
    """A finite number; numeric text is accepted because Jackson coerces it into BigDecimal."""
    if type(value) is float or type(value) is int:
        number = float(value)
    elif type(value) is str:
        try:
            number = float(value)
        except ValueError:
            raise DecodeError(f"{field}: {short(value)} is not a number") from None
    elif value is None:
        raise DecodeError(f"{field}: missing")
    else:
        raise DecodeError(f"{field}: not a number but {json_type(value)}")
    if not math.isfinite(number):
        raise DecodeError(f"{field}: not a finite number")
    return number


def _text(value: object, field: str, *, required: bool = False) -> str:
    if type(value) is str:
        if required and not value:
            raise DecodeError(f"{field}: must not be empty")
        return value
    if value is None:
        if required:
            raise DecodeError(f"{field}: missing")
        return ""
    raise DecodeError(f"{field}: must be a string, not {json_type(value)}")


def _enum(value: object, table: dict[str, _E], field: str, default: _E) -> _E:
    if value is None:
        return default
    if type(value) is str and value.lower() in table:
        return table[value.lower()]
    shown = short(value) if type(value) is str else json_type(value)
    choices = ", ".join(name.capitalize() for name in table)
    raise DecodeError(f"{field}: {shown} is not one of {choices}")


def _new_event(request: dict[str, Any], base: pb.Event, received_ms: int, where: str) -> pb.Event:
    """An event with the fields every SiteWhere create request shares."""
    event = pb.Event()
    event.CopyFrom(base)
    event.event_time_ms = event_time(request.get("eventDate"), received_ms, f"{where}.eventDate")
    ident = request.get("alternateId")
    if ident is not None:
        event.alternate_id = alternate_id(ident, f"{where}.alternateId")
    meta = metadata(request.get("metadata"), f"{where}.metadata", coerce_scalars=True)
    if meta:
        event.metadata.update(meta)
    return event


def _measurement(request: dict[str, Any], event: pb.Event, where: str) -> None:
    name = _text(request.get("name"), f"{where}.name", required=True)
    event.measurement.values[name] = _number(request.get("value"), f"{where}.value")


def _measurements(request: dict[str, Any], event: pb.Event, where: str) -> None:
    """SiteWhere 1.x's multi-value form: numbers are values, booleans become 1.0/0.0 and text
    that is not a number goes to metadata, exactly as SiteWhere's own decoder did."""
    raw = request.get("measurements")
    field = f"{where}.measurements"
    if type(raw) is not dict:
        raise DecodeError(f"{field}: must be an object, not {json_type(raw)}")
    values = event.measurement.values
    for key, value in raw.items():
        if not key:
            raise DecodeError(f"{field}: a value has an empty name")
        if type(value) is bool:
            values[key] = 1.0 if value else 0.0
        elif type(value) is str:
            try:
                number = float(value)
            except ValueError:
                event.metadata[key] = value
                continue
            if not math.isfinite(number):
                raise DecodeError(f"{field}.{field_name(key)}: not a finite number")
            values[key] = number
        else:
            values[key] = _number(value, f"{field}.{field_name(key)}")
    if not values:
        raise DecodeError(f"{field}: no numeric values")


def _location(request: dict[str, Any], event: pb.Event, where: str) -> None:
    location = event.location
    lat = _number(request.get("latitude"), f"{where}.latitude")
    lon = _number(request.get("longitude"), f"{where}.longitude")
    location.latitude = check_latitude(lat, f"{where}.latitude")
    location.longitude = check_longitude(lon, f"{where}.longitude")
    elevation = request.get("elevation")
    location.elevation = 0.0 if elevation is None else _number(elevation, f"{where}.elevation")


def _alert(request: dict[str, Any], event: pb.Event, where: str) -> None:
    alert = event.alert
    alert.alert_type = _text(request.get("type"), f"{where}.type", required=True)
    alert.level = _enum(request.get("level"), _LEVELS, f"{where}.level", pb.ALERT_LEVEL_INFO)
    alert.message = _text(request.get("message"), f"{where}.message")
    alert.source = _enum(request.get("source"), _SOURCES, f"{where}.source", pb.ALERT_SOURCE_DEVICE)


def _registration(request: dict[str, Any], event: pb.Event, where: str) -> None:
    device_type = request.get("deviceTypeToken", request.get("specificationToken"))
    change = event.state_change
    change.kind = pb.STATE_CHANGE_KIND_REGISTRATION
    change.current = _text(device_type, f"{where}.deviceTypeToken")
    for key in _REGISTRATION_METADATA:
        value = request.get(key)
        if value is not None and key not in event.metadata:
            event.metadata[key] = _text(value, f"{where}.{key}")


def _acknowledge(request: dict[str, Any], event: pb.Event, where: str, originator: str) -> None:
    invocation = request.get("originatingEventId")
    if invocation is None:
        if not originator:
            raise DecodeError(f'{where}.originatingEventId: missing (and no "originator")')
        invocation = originator
    answer = event.command_response
    answer.invocation = _text(invocation, f"{where}.originatingEventId", required=True)
    message = request.get("response")
    body = {} if message is None else {"message": _text(message, f"{where}.response")}
    answer.response_json = orjson.dumps(body).decode()


def _device_token(obj: dict[str, Any], ctx: DecodeContext) -> str:
    token = obj.get("deviceToken", obj.get("hardwareId"))
    if token is None:
        raise DecodeError('missing "deviceToken"')
    if type(token) is not str or not TOKEN_RE.match(token):
        shown = short(token) if type(token) is str else json_type(token)
        raise DecodeError(
            f"deviceToken: {shown} is not a valid device token "
            "(letters, digits and . _ : - up to 128 characters)"
        )
    if ctx.device is not None and token != ctx.device:
        raise DecodeError(f"deviceToken: {short(token)} does not match the topic's device")
    return token


def _request(obj: object, ctx: DecodeContext) -> list[pb.Event]:
    """The events of one SiteWhere device request or event batch."""
    if type(obj) is not dict:
        raise DecodeError(f"must be an object, not {json_type(obj)}")
    base = pb.Event(tenant=ctx.tenant, device=_device_token(obj, ctx), received_time_ms=ctx.received_ms)
    originator = _text(obj.get("originator"), "originator")
    if originator:
        base.metadata["originator"] = originator
    kind = obj.get("type")
    if kind is None and any(key in obj for key in ("measurements", "locations", "alerts")):
        return _batch(obj, base, ctx.received_ms)
    if kind is None:
        raise DecodeError('missing "type"')
    if type(kind) is not str:
        raise DecodeError(f"type: must be a string, not {json_type(kind)}")
    if kind not in SITEWHERE_TYPES:
        if kind in _UNSUPPORTED:
            raise DecodeError(f"type {short(kind)} is not supported by fieldgate")
        raise DecodeError(f"unknown type {short(kind)} (expected one of {', '.join(SITEWHERE_TYPES)})")
    request = obj.get("request")
    if type(request) is not dict:
        if request is None:
            raise DecodeError('missing "request"')
        raise DecodeError(f"request: must be an object, not {json_type(request)}")
    event = _new_event(request, base, ctx.received_ms, "request")
    if kind == "DeviceMeasurement":
        _measurement(request, event, "request")
    elif kind == "DeviceMeasurements":
        _measurements(request, event, "request")
    elif kind == "DeviceLocation":
        _location(request, event, "request")
    elif kind == "DeviceAlert":
        _alert(request, event, "request")
    elif kind == "RegisterDevice":
        _registration(request, event, "request")
    else:  # Acknowledge
        _acknowledge(request, event, "request", originator)
    return [event]


def _batch(obj: dict[str, Any], base: pb.Event, received_ms: int) -> list[pb.Event]:
    """SiteWhere's JSON batch: lists of measurement, location and alert create requests."""
    events: list[pb.Event] = []
    for key in ("measurements", "locations", "alerts"):
        items = obj.get(key)
        if items is None:
            continue
        if type(items) is not list:
            raise DecodeError(f"{key}: must be an array, not {json_type(items)}")
        if len(events) + len(items) > MAX_EVENTS:
            check_event_count(len(events) + len(items))
        for index, request in enumerate(items):
            where = f"{key}[{index}]"
            if type(request) is not dict:
                raise DecodeError(f"{where}: must be an object, not {json_type(request)}")
            event = _new_event(request, base, received_ms, where)
            if key == "measurements":
                # 2.x sends one name/value per entry, 1.x a "measurements" object.
                if "measurements" in request:
                    _measurements(request, event, where)
                else:
                    _measurement(request, event, where)
            elif key == "locations":
                _location(request, event, where)
            else:
                _alert(request, event, where)
            events.append(event)
    check_event_count(len(events), "batch")
    return events


def decode_sitewhere(payload: bytes, ctx: DecodeContext) -> list[pb.Event]:
    """Events of a SiteWhere JSON payload: one device request or batch, or an array of them."""
    doc = load_json(payload)
    if type(doc) is dict:
        return _request(doc, ctx)
    if type(doc) is not list:
        raise DecodeError(f"payload must be a JSON object or an array of objects, not {json_type(doc)}")
    check_event_count(len(doc))
    events: list[pb.Event] = []
    for index, obj in enumerate(doc):
        try:
            events.extend(_request(obj, ctx))
        except DecodeError as err:
            raise DecodeError(f"item {index}: {err.reason}") from None
        if len(events) > MAX_EVENTS:
            check_event_count(len(events))
    return events
