"""Protobuf payloads (EventBatch on .../events/pb): who may write what, and limits."""

from __future__ import annotations

import pytest

from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.protocol.codec.json_events import MAX_EVENTS
from fieldgate.protocol.codec.protobuf import decode_protobuf
from fieldgate.v1 import events_pb2 as pb

CTX = DecodeContext(tenant="default", device="dev-1", received_ms=1_700_000_000_000)


def _batch(count: int, **fields: object) -> bytes:
    events = [pb.Event(measurement=pb.Measurement(values={"n": float(i)}), **fields) for i in range(count)]  # type: ignore[arg-type]
    return pb.EventBatch(events=events).SerializeToString()


def test_a_device_cannot_write_into_another_tenant_or_device() -> None:
    events = decode_protobuf(_batch(3, tenant="victim", device="victim-device", id="forged"), CTX)
    assert {(e.tenant, e.device, e.id) for e in events} == {("default", "dev-1", "")}


def test_ten_thousand_events_pass_and_one_more_is_refused() -> None:
    assert len(decode_protobuf(_batch(MAX_EVENTS), CTX)) == MAX_EVENTS
    with pytest.raises(DecodeError, match="too many events: 10001"):
        decode_protobuf(_batch(MAX_EVENTS + 1), CTX)


def test_unknown_fields_do_not_travel_on() -> None:
    known = _batch(1)
    # Field 99 of Event, length-delimited: something a newer firmware schema might add.
    extra = b"\x9a\x06\x03abc"
    event_bytes = known[2:] + extra
    payload = b"\x0a" + bytes([len(event_bytes)]) + event_bytes
    (event,) = decode_protobuf(payload, CTX)
    assert event.measurement.values["n"] == 0.0
    assert extra not in event.SerializeToString()


def test_without_a_topic_device_the_event_must_name_a_valid_one() -> None:
    ctx = DecodeContext("default", None, 0)
    assert decode_protobuf(_batch(1, device="dev-9"), ctx)[0].device == "dev-9"
    with pytest.raises(DecodeError, match="not a valid device token"):
        decode_protobuf(_batch(1, device="dev/9"), ctx)


def test_alternate_id_length_is_bounded() -> None:
    with pytest.raises(DecodeError, match="alternate_id: longer than 256"):
        decode_protobuf(_batch(1, alternate_id="x" * 257), CTX)
