"""fieldgate JSON payloads: limits and rules the golden vectors cannot show compactly."""

from __future__ import annotations

import orjson
import pytest

from fieldgate.errors import FieldgateError
from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.protocol.codec.json_events import MAX_EVENTS, MAX_ID_CHARS, decode_json
from fieldgate.protocol.errors import ProtocolError
from fieldgate.v1 import events_pb2 as pb

CTX = DecodeContext(tenant="default", device="dev-1", received_ms=1_700_000_000_000)


def _measurements(count: int) -> bytes:
    return orjson.dumps([{"type": "measurement", "values": {"n": i}} for i in range(count)])


def test_ten_thousand_events_in_one_message_are_accepted() -> None:
    events = decode_json(_measurements(MAX_EVENTS), CTX)
    assert len(events) == MAX_EVENTS
    assert [e.measurement.values["n"] for e in events] == list(range(MAX_EVENTS))


def test_more_than_ten_thousand_events_are_refused() -> None:
    with pytest.raises(DecodeError, match=r"too many events: 10001 \(limit 10000"):
        decode_json(_measurements(MAX_EVENTS + 1), CTX)


def test_alternate_id_length_is_bounded() -> None:
    ok = {"type": "measurement", "values": {"t": 1}, "id": "x" * MAX_ID_CHARS}
    assert decode_json(orjson.dumps(ok), CTX)[0].alternate_id == "x" * MAX_ID_CHARS
    with pytest.raises(DecodeError, match="id: longer than 256 characters"):
        decode_json(orjson.dumps({**ok, "id": "x" * (MAX_ID_CHARS + 1)}), CTX)


def test_the_same_payload_gives_the_same_alternate_id_so_resends_deduplicate() -> None:
    payload = orjson.dumps({"type": "measurement", "values": {"t": 1}, "id": "boot7-seq42"})
    first = decode_json(payload, CTX)[0]
    resent = decode_json(payload, DecodeContext("default", "dev-1", CTX.received_ms + 5_000))[0]
    assert first.alternate_id == resent.alternate_id == "boot7-seq42"
    assert first.event_time_ms == first.received_time_ms  # no ts: the first receive time
    assert resent.received_time_ms == CTX.received_ms + 5_000


def test_decoders_never_set_the_cloud_owned_fields() -> None:
    payload = orjson.dumps({"type": "measurement", "values": {"t": 1}, "id": "abc", "assignment": "forged"})
    (event,) = decode_json(payload, CTX)
    assert event.id == ""
    assert event.assignment == ""


def test_reasons_quote_hostile_text_briefly() -> None:
    payload = orjson.dumps({"type": "x" * 10_000})
    with pytest.raises(DecodeError) as caught:
        decode_json(payload, CTX)
    assert len(caught.value.reason) < 200


def test_a_value_name_that_is_odd_is_quoted_in_the_reason() -> None:
    payload = orjson.dumps({"type": "measurement", "values": {"a.b\n": "x"}})
    with pytest.raises(DecodeError, match=r'values\."a\.b\\n": not a number but a string'):
        decode_json(payload, CTX)


def test_a_topic_without_device_is_refused() -> None:
    with pytest.raises(DecodeError, match="no device"):
        decode_json(b'{"type":"measurement","values":{"t":1}}', DecodeContext("default", None, 0))


def test_decode_error_belongs_to_the_protocol_exception_tree() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_json(b"not json", CTX)
    assert isinstance(caught.value, FieldgateError)


def test_decoded_events_are_complete_protobuf_messages() -> None:
    payload = orjson.dumps(
        [
            {"type": "measurement", "values": {"t": 1.5}, "metadata": {"a": "b"}},
            {"type": "location", "lat": 1, "lon": 2, "ele": 3},
            {"type": "alert", "alert_type": "x", "level": "error", "message": "m"},
            {"type": "command_response", "invocation": "i", "response": {"nested": [1, {"a": None}]}},
        ]
    )
    events = decode_json(payload, CTX)
    batch = pb.EventBatch(events=events)
    assert pb.EventBatch.FromString(batch.SerializeToString()) == batch
    assert orjson.loads(events[3].command_response.response_json) == {"nested": [1, {"a": None}]}
