"""The JSON documents both APIs return for records that have no protobuf message of their own.

A document is a pydantic model built from a stored record: the REST routes answer it as is
(its class name is the schema's name in the OpenAPI document), the gRPC services send it as
JSON text in a string field (``DeviceStateReply.state_json``), so the two transports say the
same thing and neither imports the other. Times are ISO 8601 (:func:`iso`), with the epoch-ms
value beside them where clients compare times.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from fieldgate.cloud.store.state import DeviceState
from fieldgate.timeutil import ms_to_iso


def iso(ms: int) -> str:
    """ISO 8601 for an epoch-ms time; empty for 0 (unset) or a time no calendar can show."""
    if ms <= 0:
        return ""
    try:
        return ms_to_iso(ms)
    except (ValueError, OverflowError, OSError):
        return ""


# --- device state (cloud/pipeline/state.py keeps it) --------------------------------------------


class MeasurementStateOut(BaseModel):
    value: float
    time: str
    time_ms: int


class LocationStateOut(BaseModel):
    lat: float
    lon: float
    ele: float
    time: str
    time_ms: int


class AlertStateOut(BaseModel):
    alert_type: str
    level: str
    message: str
    source: str
    state: str  # raised | cleared for rule alerts, "" for device alerts
    rule: str
    event_id: str
    time: str
    time_ms: int


class LinkStateOut(BaseModel):
    status: str  # connected | disconnected (the edge's link health)
    adapter: str
    time: str
    time_ms: int


class DeviceStateOut(BaseModel):
    device: str
    device_type: str
    assignment: str
    presence: Literal["present", "missing"]
    presence_changed: str
    last_seen: str  # newest event time of the device's own events
    last_seen_ms: int
    last_received: str  # newest received time
    last_received_ms: int
    location: LocationStateOut | None
    measurements: dict[str, MeasurementStateOut]
    last_alert: AlertStateOut | None
    link: LinkStateOut | None
    raised_rules: list[str]  # rules whose alert is raised for this device now

    @classmethod
    def of(cls, s: DeviceState) -> DeviceStateOut:
        loc, a, link = s.location, s.last_alert, s.link
        return cls(
            device=s.device,
            device_type=s.device_type,
            assignment=s.assignment,
            presence=s.presence,
            presence_changed=iso(s.presence_ms),
            last_seen=iso(s.last_event_ms),
            last_seen_ms=s.last_event_ms,
            last_received=iso(s.last_received_ms),
            last_received_ms=s.last_received_ms,
            location=None
            if loc is None
            else LocationStateOut(
                lat=loc.lat, lon=loc.lon, ele=loc.ele, time=iso(loc.time_ms), time_ms=loc.time_ms
            ),
            measurements={
                k: MeasurementStateOut(value=v.value, time=iso(v.time_ms), time_ms=v.time_ms)
                for k, v in sorted(s.measurements.items())
            },
            last_alert=None
            if a is None
            else AlertStateOut(
                alert_type=a.alert_type,
                level=a.level,
                message=a.message,
                source=a.source,
                state=a.state,
                rule=a.rule,
                event_id=a.event_id,
                time=iso(a.time_ms),
                time_ms=a.time_ms,
            ),
            link=None
            if link is None
            else LinkStateOut(
                status=link.status, adapter=link.adapter, time=iso(link.time_ms), time_ms=link.time_ms
            ),
            raised_rules=sorted(k for k, r in s.rules.items() if r.raised),
        )
