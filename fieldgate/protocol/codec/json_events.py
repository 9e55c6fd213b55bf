"""fieldgate's own JSON device payload: one event object or an array of them → protobuf events.

This is the format most firmware speaks (docs/protocols/mqtt.md is the contract), so it is on
the hot path of every MQTT message. Two consequences shape the code:

- the payload is parsed with orjson and the protobuf messages are built directly from the parsed
  values (no dict → ``json_format`` round trip, which costs several times more per event);
- validation is strict but cheap: exact ``type()`` checks instead of isinstance chains, and the
  per-event prefix of a reason ("event 3: ...") is only built once something is wrong.

Everything a device gets wrong raises :class:`DecodeError` with a short reason that names the
offending field, so the failed-decode lane tells the firmware author what to fix.

Unknown keys in an event object are ignored, so newer firmware with extra fields keeps working
with older agents. ``null`` in an optional field means "not given".

The small validators here (time, ids, metadata, limits) are shared by the SiteWhere and
protobuf codecs so all three formats enforce the same rules.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.timeutil import parse_time_ms
from fieldgate.v1 import events_pb2 as pb

__all__ = [
    "ALERT_LEVELS",
    "EVENT_TYPES",
    "MAX_EVENTS",
    "MAX_ID_CHARS",
    "MAX_TIME_MS",
    "alternate_id",
    "check_event_count",
    "check_latitude",
    "check_longitude",
    "decode_json",
    "event_time",
    "field_name",
    "json_type",
    "load_json",
    "metadata",
    "short",
]

# One message may carry at most this many events: bounds the work (and memory) one publish costs.
MAX_EVENTS = 10_000
# Alternate ids are idempotency keys stored with every event; keep them key-sized.
MAX_ID_CHARS = 256
# 9999-12-31T23:59:59.999Z: anything later is a unit mistake (e.g. microseconds), not a time.
MAX_TIME_MS = 253_402_300_799_999

EVENT_TYPES = ("measurement", "location", "alert", "command_response")

ALERT_LEVELS: dict[str, pb.AlertLevel.ValueType] = {
    "info": pb.ALERT_LEVEL_INFO,
    "warning": pb.ALERT_LEVEL_WARNING,
    "error": pb.ALERT_LEVEL_ERROR,
    "critical": pb.ALERT_LEVEL_CRITICAL,
}

_TYPE_NAMES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def json_type(value: object) -> str:
    """How a JSON value is called in a reason: "an object", "a string", "null"..."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def short(text: str, limit: int = 64) -> str:
    """Untrusted text quoted (JSON style) in a reason, cut so a hostile payload cannot bloat logs."""
    quoted = orjson.dumps(text).decode()
    return quoted if len(quoted) <= limit else quoted[: limit - 4] + '..."'


def field_name(key: str) -> str:
    """A JSON key as it appears in a reason ("values.temperature"), quoted if it is odd."""
    return key if len(key) <= 40 and key.isprintable() and "." not in key else short(key, 44)


def load_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise DecodeError(f"bad JSON: {err}") from err


def check_event_count(count: int, container: str = "array") -> None:
    if count == 0:
        raise DecodeError(f"empty {container}: no events")
    if count > MAX_EVENTS:
        raise DecodeError(f"too many events: {count} (limit {MAX_EVENTS} per message)")


def event_time(value: object, received_ms: int, field: str) -> int:
    """Epoch ms of an optional ISO 8601 / epoch-ms time; the receive time when absent."""
    if value is None:
        return received_ms
    if type(value) is int and 0 <= value <= MAX_TIME_MS:  # the common case, kept cheap
        return value
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise DecodeError(f"{field}: must be ISO 8601 text or epoch milliseconds, not {json_type(value)}")
    try:
        ms = parse_time_ms(value)
    except (ValueError, OverflowError) as err:
        raise DecodeError(f"{field}: {str(err)[:120]}") from None
    if not 0 <= ms <= MAX_TIME_MS:
        raise DecodeError(f"{field}: out of range (epoch milliseconds from 1970 to 9999)")
    return ms


def alternate_id(value: object, field: str) -> str:
    """A device-chosen idempotency key; "" (the edge assigns one) when absent."""
    if value is None:
        return ""
    if type(value) is not str:
        raise DecodeError(f"{field}: must be a string, not {json_type(value)}")
    if not value:
        raise DecodeError(f"{field}: must not be empty (leave it out to let the edge assign one)")
    if len(value) > MAX_ID_CHARS:
        raise DecodeError(f"{field}: longer than {MAX_ID_CHARS} characters")
    return value


def metadata(value: object, field: str, *, coerce_scalars: bool = False) -> dict[str, str] | None:
    """A string → string map. ``coerce_scalars`` turns numbers and booleans into text, as
    SiteWhere's JSON mapper does; fieldgate's own format insists on strings."""
    if value is None:
        return None
    if type(value) is not dict:
        raise DecodeError(f"{field}: must be an object of strings, not {json_type(value)}")
    if coerce_scalars:
        return {key: _scalar_text(item, f"{field}.{field_name(key)}") for key, item in value.items()}
    for key, item in value.items():
        if type(item) is not str:
            raise DecodeError(f"{field}.{field_name(key)}: must be a string, not {json_type(item)}")
    return value


def _scalar_text(value: object, field: str) -> str:
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) in (int, float):
        return str(value)
    raise DecodeError(f"{field}: must be a string, not {json_type(value)}")


def check_latitude(value: float, field: str) -> float:
    if not -90.0 <= value <= 90.0:
        raise DecodeError(f"{field}: {value} is outside -90..90")
    return value


def check_longitude(value: float, field: str) -> float:
    if not -180.0 <= value <= 180.0:
        raise DecodeError(f"{field}: {value} is outside -180..180")
    return value


def _number(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key)
    if type(value) is float:
        if not math.isfinite(value):
            raise DecodeError(f"{key}: not a finite number")
        return value
    if type(value) is int:
        return float(value)
    if value is None:
        raise DecodeError(f'missing "{key}"')
    raise DecodeError(f"{key}: not a number but {json_type(value)}")


def _text(obj: dict[str, Any], key: str, *, required: bool) -> str:
    value = obj.get(key)
    if type(value) is str:
        if required and not value:
            raise DecodeError(f"{key}: must not be empty")
        return value
    if value is None:
        if required:
            raise DecodeError(f'missing "{key}"')
        return ""
    raise DecodeError(f"{key}: must be a string, not {json_type(value)}")


def _values(raw: object) -> dict[str, float]:
    if type(raw) is not dict:
        if raw is None:
            raise DecodeError('missing "values"')
        raise DecodeError(f"values: must be an object of numbers, not {json_type(raw)}")
    if not raw:
        raise DecodeError("values: must not be empty")
    for key, value in raw.items():
        t = type(value)
        if t is float:
            if not math.isfinite(value):
                raise DecodeError(f"values.{field_name(key)}: not a finite number")
        elif t is not int:
            raise DecodeError(f"values.{field_name(key)}: not a number but {json_type(value)}")
        if not key:
            raise DecodeError("values: a value has an empty name")
    return raw


def _fill(event: pb.Event, obj: dict[str, Any], kind: object) -> None:
    """Set the payload oneof of ``event`` from one event object.

    Sub-messages are filled in place: measurably cheaper with upb than constructing them
    separately and passing them to the ``Event`` constructor (which copies).
    """
    if kind == "measurement":
        # Item by item: the map's update() is the generic Python MutableMapping one (slower).
        values = event.measurement.values
        for name, value in _values(obj.get("values")).items():
            values[name] = value
    elif kind == "location":
        lat = check_latitude(_number(obj, "lat"), "lat")
        lon = check_longitude(_number(obj, "lon"), "lon")
        location = event.location
        location.latitude = lat
        location.longitude = lon
        if obj.get("ele") is not None:
            location.elevation = _number(obj, "ele")
    elif kind == "alert":
        level_text = obj.get("level")
        if level_text is None:
            level = pb.ALERT_LEVEL_INFO
        elif type(level_text) is str and level_text in ALERT_LEVELS:
            level = ALERT_LEVELS[level_text]
        else:
            shown = short(level_text) if type(level_text) is str else json_type(level_text)
            raise DecodeError(f"level: {shown} is not one of info, warning, error, critical")
        alert = event.alert
        alert.alert_type = _text(obj, "alert_type", required=True)
        alert.level = level
        alert.message = _text(obj, "message", required=False)
        alert.source = pb.ALERT_SOURCE_DEVICE
    elif kind == "command_response":
        invocation = _text(obj, "invocation", required=True)
        response = obj.get("response")
        if response is None:
            response_json = "{}"
        elif type(response) is dict:
            response_json = orjson.dumps(response).decode()
        else:
            raise DecodeError(f"response: must be an object, not {json_type(response)}")
        answer = event.command_response
        answer.invocation = invocation
        answer.response_json = response_json
    elif kind is None:
        raise DecodeError('missing "type"')
    elif type(kind) is str:
        raise DecodeError(f"unknown type {short(kind)} (expected one of {', '.join(EVENT_TYPES)})")
    else:
        raise DecodeError(f"type: must be a string, not {json_type(kind)}")


def _event(obj: object, tenant: str, device: str, received_ms: int) -> pb.Event:
    if type(obj) is not dict:
        raise DecodeError(f"must be an object, not {json_type(obj)}")
    event = pb.Event(
        tenant=tenant,
        device=device,
        event_time_ms=event_time(obj.get("ts"), received_ms, "ts"),
        received_time_ms=received_ms,
    )
    _fill(event, obj, obj.get("type"))
    ident = obj.get("id")
    if ident is not None:
        event.alternate_id = alternate_id(ident, "id")
    meta = obj.get("metadata")
    if meta is not None:
        checked = metadata(meta, "metadata")
        if checked:
            event.metadata.update(checked)
    return event


def decode_json(payload: bytes, ctx: DecodeContext) -> list[pb.Event]:
    """Events of a fieldgate JSON payload (one object or a non-empty array of objects)."""
    device = ctx.device
    if device is None:
        raise DecodeError("no device: publish to fieldgate/<tenant>/devices/<device>/events")
    doc = load_json(payload)
    tenant, received_ms = ctx.tenant, ctx.received_ms
    if type(doc) is dict:
        return [_event(doc, tenant, device, received_ms)]
    if type(doc) is not list:
        raise DecodeError(f"payload must be a JSON object or an array of objects, not {json_type(doc)}")
    check_event_count(len(doc))
    events = []
    for index, obj in enumerate(doc):
        try:
            events.append(_event(obj, tenant, device, received_ms))
        except DecodeError as err:
            raise DecodeError(f"event {index}: {err.reason}") from None
    return events
