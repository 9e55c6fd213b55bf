"""Property tests: what holds for every payload, not just the golden ones.

- any valid measurement round-trips its values exactly (through JSON and through protobuf);
- no input whatsoever makes a decoder raise anything but DecodeError (an adapter relies on
  that to keep bad input in the failed-decode lane instead of crashing);
- an EventBatch a device serializes comes back event for event.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.protocol.codec.json_events import decode_json
from fieldgate.protocol.codec.protobuf import decode_protobuf
from fieldgate.protocol.codec.sitewhere import decode_sitewhere
from fieldgate.v1 import events_pb2 as pb

CTX = DecodeContext(tenant="default", device="dev-1", received_ms=1_700_000_000_000)
SW_CTX = DecodeContext(tenant="default", device=None, received_ms=1_700_000_000_000)

names = st.text(min_size=1, max_size=20)
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
value_maps = st.dictionaries(names, numbers, min_size=1, max_size=20)
times = st.integers(0, 253_402_300_799_999)

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | numbers | st.text(max_size=10)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _near_miss_event(draw: st.DrawFn) -> dict[str, Any]:
    """Objects shaped like real events with any field possibly wrong."""
    keys = st.sampled_from(
        [
            "type",
            "values",
            "ts",
            "id",
            "metadata",
            "lat",
            "lon",
            "ele",
            "alert_type",
            "level",
            "message",
            "invocation",
            "response",
        ]
    )
    kind = draw(st.sampled_from(["measurement", "location", "alert", "command_response", "other", None]))
    obj: dict[str, Any] = draw(st.dictionaries(keys, json_values, max_size=6))
    if kind is not None:
        obj["type"] = kind
    return obj


near_miss_events = st.composite(_near_miss_event)()


@given(values=value_maps, ts=times | st.none(), ident=st.text(min_size=1, max_size=40) | st.none())
def test_any_valid_measurement_round_trips_its_values_exactly(
    values: dict[str, float], ts: int | None, ident: str | None
) -> None:
    obj: dict[str, Any] = {"type": "measurement", "values": values}
    if ts is not None:
        obj["ts"] = ts
    if ident is not None:
        obj["id"] = ident
    (event,) = decode_json(orjson.dumps(obj), CTX)
    assert dict(event.measurement.values) == values
    assert event.event_time_ms == (CTX.received_ms if ts is None else ts)
    assert event.alternate_id == (ident or "")
    # ... and the values survive the wire to the cloud bit for bit.
    again = pb.Event.FromString(event.SerializeToString())
    assert all(
        math.copysign(1, again.measurement.values[k]) == math.copysign(1, v) for k, v in values.items()
    )
    assert dict(again.measurement.values) == values


@given(payload=st.binary(max_size=300))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_raise_nothing_but_decode_error(payload: bytes) -> None:
    for decode, ctx in ((decode_json, CTX), (decode_sitewhere, SW_CTX), (decode_protobuf, CTX)):
        try:
            decode(payload, ctx)
        except DecodeError:
            pass


@given(doc=json_values)
def test_arbitrary_json_raises_nothing_but_decode_error(doc: object) -> None:
    payload = orjson.dumps(doc)
    for decode, ctx in ((decode_json, CTX), (decode_sitewhere, SW_CTX)):
        try:
            decode(payload, ctx)
        except DecodeError:
            pass


@given(objs=st.lists(near_miss_events, min_size=1, max_size=5))
def test_near_miss_events_decode_or_raise_decode_error(objs: list[dict[str, Any]]) -> None:
    try:
        events = decode_json(orjson.dumps(objs), CTX)
    except DecodeError:
        return
    assert len(events) == len(objs)
    assert all(e.WhichOneof("payload") == obj["type"] for e, obj in zip(events, objs, strict=True))


@given(
    token=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,20}\Z"),
    kind=st.sampled_from(
        [
            "DeviceMeasurement",
            "DeviceMeasurements",
            "DeviceLocation",
            "DeviceAlert",
            "RegisterDevice",
            "Acknowledge",
            "DeviceStream",
            "Nope",
        ]
    ),
    originator=st.none() | st.text(max_size=8),
    request=st.dictionaries(
        st.sampled_from(
            [
                "name",
                "value",
                "measurements",
                "latitude",
                "longitude",
                "elevation",
                "type",
                "level",
                "message",
                "source",
                "eventDate",
                "alternateId",
                "metadata",
                "deviceTypeToken",
                "originatingEventId",
                "response",
            ]
        ),
        json_values,
        max_size=6,
    ),
)
def test_near_miss_sitewhere_requests_decode_or_raise_decode_error(
    token: str, kind: str, originator: str | None, request: dict[str, Any]
) -> None:
    obj = {"deviceToken": token, "type": kind, "request": request, "originator": originator}
    try:
        events = decode_sitewhere(orjson.dumps(obj), SW_CTX)
    except DecodeError:
        return
    assert [e.device for e in events] == [token]


measurements = st.builds(pb.Measurement, values=value_maps)
locations = st.builds(
    pb.Location,
    latitude=st.floats(-90, 90),
    longitude=st.floats(-180, 180),
    elevation=st.floats(allow_nan=False, allow_infinity=False),
)
alerts = st.builds(
    pb.Alert,
    alert_type=st.text(min_size=1, max_size=20),
    level=st.sampled_from([1, 2, 3, 4]),
    message=st.text(max_size=40),
    source=st.sampled_from([1, 2]),
)
responses = st.builds(
    pb.CommandResponse,
    invocation=st.text(min_size=1, max_size=32),
    response_json=st.dictionaries(st.text(max_size=8), json_scalars, max_size=4).map(
        lambda body: orjson.dumps(body).decode()
    ),
)


@st.composite
def device_events(draw: st.DrawFn) -> pb.Event:
    event = pb.Event(
        alternate_id=draw(st.text(max_size=40)),
        event_time_ms=draw(st.integers(1, 253_402_300_799_999)),
        metadata=draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)),
    )
    payload = draw(st.sampled_from(["measurement", "location", "alert", "command_response"]))
    strategy = {
        "measurement": measurements,
        "location": locations,
        "alert": alerts,
        "command_response": responses,
    }
    getattr(event, payload).CopyFrom(draw(strategy[payload]))
    return event


@given(events=st.lists(device_events(), min_size=1, max_size=20))
def test_protobuf_event_batch_round_trips(events: list[pb.Event]) -> None:
    payload = pb.EventBatch(events=events).SerializeToString()
    decoded = decode_protobuf(payload, CTX)
    expected = []
    for event in events:
        want = pb.Event()
        want.CopyFrom(event)
        want.tenant, want.device, want.received_time_ms = CTX.tenant, CTX.device, CTX.received_ms  # type: ignore[assignment]
        expected.append(want)
    assert decoded == expected
