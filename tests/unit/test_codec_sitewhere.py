"""SiteWhere JSON payloads: rules beyond the golden vectors (tests/unit/golden/sitewhere.json)."""

from __future__ import annotations

import orjson
import pytest

from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.protocol.codec.json_events import MAX_EVENTS
from fieldgate.protocol.codec.sitewhere import decode_sitewhere
from fieldgate.v1 import events_pb2 as pb

CTX = DecodeContext(tenant="acme", device=None, received_ms=1_700_000_000_000)


def _measurement(token: str = "sw-1", value: float = 1.0) -> dict[str, object]:
    return {"deviceToken": token, "type": "DeviceMeasurement", "request": {"name": "t", "value": value}}


def test_the_tenant_comes_from_the_topic() -> None:
    (event,) = decode_sitewhere(orjson.dumps(_measurement()), CTX)
    assert (event.tenant, event.device) == ("acme", "sw-1")


def test_a_device_named_by_the_topic_must_match_the_device_token() -> None:
    ctx = DecodeContext("acme", "sw-1", 0)
    assert decode_sitewhere(orjson.dumps(_measurement("sw-1")), ctx)[0].device == "sw-1"
    with pytest.raises(DecodeError, match="does not match the topic's device"):
        decode_sitewhere(orjson.dumps(_measurement("sw-2")), ctx)


def test_a_batch_of_more_than_ten_thousand_events_is_refused() -> None:
    batch = {"deviceToken": "sw-1", "measurements": [{"name": "t", "value": i} for i in range(MAX_EVENTS)]}
    assert len(decode_sitewhere(orjson.dumps(batch), CTX)) == MAX_EVENTS
    batch["alerts"] = [{"type": "x"}]
    with pytest.raises(DecodeError, match="too many events"):
        decode_sitewhere(orjson.dumps(batch), CTX)


def test_an_array_of_batches_is_bounded_by_the_events_it_expands_to() -> None:
    half = {"deviceToken": "sw-1", "measurements": [{"name": "t", "value": 1}] * (MAX_EVENTS // 2 + 1)}
    with pytest.raises(DecodeError, match="too many events"):
        decode_sitewhere(orjson.dumps([half, half]), CTX)


def test_request_metadata_wins_over_originator_and_registration_tokens() -> None:
    payload = {
        "deviceToken": "sw-1",
        "originator": "inv-1",
        "type": "RegisterDevice",
        "request": {
            "deviceTypeToken": "t",
            "areaToken": "a",
            "metadata": {"originator": "o", "areaToken": "b"},
        },
    }
    (event,) = decode_sitewhere(orjson.dumps(payload), CTX)
    assert dict(event.metadata) == {"originator": "o", "areaToken": "b"}


def test_sitewhere_one_x_specification_token_names_the_device_type() -> None:
    payload = {"hardwareId": "sw-1", "type": "RegisterDevice", "request": {"specificationToken": "mt90"}}
    (event,) = decode_sitewhere(orjson.dumps(payload), CTX)
    assert event.state_change.current == "mt90"


def test_alert_level_and_source_ignore_case_like_sitewhere_clients_send_them() -> None:
    payload = {
        "deviceToken": "sw-1",
        "type": "DeviceAlert",
        "request": {"type": "x", "level": "WARNING", "source": "system"},
    }
    (event,) = decode_sitewhere(orjson.dumps(payload), CTX)
    assert event.alert.level == pb.ALERT_LEVEL_WARNING
    assert event.alert.source == pb.ALERT_SOURCE_SYSTEM
