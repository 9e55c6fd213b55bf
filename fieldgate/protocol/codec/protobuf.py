"""Protobuf device payloads: a serialized ``fieldgate.v1.EventBatch`` published on
``fieldgate/<tenant>/devices/<device>/events/pb``.

For firmware that already speaks protobuf this is the cheapest path (one upb parse, no JSON),
but the payload comes from a device and is trusted no more than JSON:

- the topic decides who is speaking: ``tenant`` and ``device`` are overwritten from the
  :class:`DecodeContext`, so a device cannot write into another tenant or device;
- fields the cloud owns are cleared: ``id`` (assigned by the cloud) and ``assignment``
  (enrichment); ``received_time_ms`` is the edge's receive time;
- every event needs a payload; a device may not send command invocations (they come from the
  cloud) and may only send REGISTRATION state changes;
- values obey the same rules as the JSON format (finite numbers, latitude/longitude ranges,
  known alert levels, at most 10,000 events, a command response body that is a JSON object).

Unknown fields are discarded so that nothing unvalidated travels on to the cloud.
"""

from __future__ import annotations

import math

import orjson
from google.protobuf.message import DecodeError as ProtobufDecodeError

from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.protocol.codec.json_events import (
    MAX_ID_CHARS,
    MAX_TIME_MS,
    check_event_count,
    check_latitude,
    check_longitude,
    field_name,
    short,
)
from fieldgate.protocol.topics import TOKEN_RE
from fieldgate.v1 import events_pb2 as pb

__all__ = ["decode_protobuf"]

_LEVELS = frozenset(pb.AlertLevel.values())
_SOURCES = frozenset(pb.AlertSource.values())


def _check_measurement(measurement: pb.Measurement) -> None:
    values = measurement.values
    if not values:
        raise DecodeError("measurement.values: must not be empty")
    if "" in values:
        raise DecodeError("measurement.values: a value has an empty name")
    # One C-level pass: the sum of finite numbers is finite unless it overflows, so only a
    # non-finite sum needs the slower per-value look that names the culprit.
    if not math.isfinite(sum(values.values())):
        for key, value in values.items():
            if not math.isfinite(value):
                raise DecodeError(f"measurement.values.{field_name(key)}: not a finite number")


def _check_location(location: pb.Location) -> None:
    for name in ("latitude", "longitude", "elevation"):
        if not math.isfinite(getattr(location, name)):
            raise DecodeError(f"location.{name}: not a finite number")
    check_latitude(location.latitude, "location.latitude")
    check_longitude(location.longitude, "location.longitude")


def _check_alert(alert: pb.Alert) -> None:
    if not alert.alert_type:
        raise DecodeError("alert.alert_type: must not be empty")
    if alert.level not in _LEVELS:
        raise DecodeError(f"alert.level: unknown level {alert.level}")
    if alert.level == pb.ALERT_LEVEL_UNSPECIFIED:
        alert.level = pb.ALERT_LEVEL_INFO
    if alert.source not in _SOURCES:
        raise DecodeError(f"alert.source: unknown source {alert.source}")
    if alert.source == pb.ALERT_SOURCE_UNSPECIFIED:
        alert.source = pb.ALERT_SOURCE_DEVICE


def _check_response(response: pb.CommandResponse) -> None:
    if not response.invocation:
        raise DecodeError("command_response.invocation: must not be empty")
    if not response.response_json:
        response.response_json = "{}"
        return
    try:
        body = orjson.loads(response.response_json)
    except orjson.JSONDecodeError as err:
        raise DecodeError(f"command_response.response_json: bad JSON: {err}") from None
    if type(body) is not dict:
        raise DecodeError("command_response.response_json: must be a JSON object")


def _check_event(event: pb.Event, ctx: DecodeContext) -> None:
    kind = event.WhichOneof("payload")
    if kind == "measurement":
        _check_measurement(event.measurement)
    elif kind == "location":
        _check_location(event.location)
    elif kind == "alert":
        _check_alert(event.alert)
    elif kind == "command_response":
        _check_response(event.command_response)
    elif kind == "state_change":
        if event.state_change.kind != pb.STATE_CHANGE_KIND_REGISTRATION:
            raise DecodeError("state_change: devices may only send REGISTRATION")
    elif kind == "command_invocation":
        raise DecodeError("command_invocation: command invocations come from the cloud, not devices")
    else:
        raise DecodeError(
            "no payload (set one of measurement, location, alert, command_response, state_change)"
        )
    if len(event.alternate_id) > MAX_ID_CHARS:
        raise DecodeError(f"alternate_id: longer than {MAX_ID_CHARS} characters")
    if event.event_time_ms == 0:
        event.event_time_ms = ctx.received_ms
    elif not 0 < event.event_time_ms <= MAX_TIME_MS:
        raise DecodeError("event_time_ms: out of range (epoch milliseconds from 1970 to 9999)")
    if ctx.device is not None:
        event.device = ctx.device
    elif not TOKEN_RE.match(event.device):
        raise DecodeError(f"device: {short(event.device)} is not a valid device token")
    event.tenant = ctx.tenant
    event.received_time_ms = ctx.received_ms
    if event.id:
        event.id = ""
    if event.assignment:
        event.assignment = ""


def decode_protobuf(payload: bytes, ctx: DecodeContext) -> list[pb.Event]:
    """Events of a serialized ``EventBatch``, re-homed to the topic's tenant and device."""
    try:
        batch = pb.EventBatch.FromString(payload)
    except ProtobufDecodeError as err:
        raise DecodeError(f"bad protobuf: not a fieldgate.v1.EventBatch ({err})") from err
    batch.DiscardUnknownFields()
    events = batch.events
    check_event_count(len(events), "batch")
    for index, event in enumerate(events):
        try:
            _check_event(event, ctx)
        except DecodeError as err:
            raise DecodeError(f"event {index}: {err.reason}") from None
    return list(events)
