"""From an inbound topic to its events: ``parse_inbound`` picks the format, ``decoder_for``
the codec, as an adapter does it."""

from __future__ import annotations

import pytest

from fieldgate.protocol.codec import DecodeContext
from fieldgate.protocol.codec.formats import decoder_for
from fieldgate.protocol.topics import parse_inbound
from fieldgate.v1 import events_pb2 as pb

PB_PAYLOAD = pb.EventBatch(
    events=[pb.Event(measurement=pb.Measurement(values={"t": 7.0}))]
).SerializeToString()


@pytest.mark.parametrize(
    ("topic", "payload", "device"),
    [
        ("fieldgate/default/devices/dev-1/events", b'{"type":"measurement","values":{"t":7}}', "dev-1"),
        ("fieldgate/default/devices/dev-1/events/pb", PB_PAYLOAD, "dev-1"),
        (
            "SiteWhere/default/input/json",
            b'{"deviceToken":"sw-1","type":"DeviceMeasurement","request":{"name":"t","value":7}}',
            "sw-1",
        ),
    ],
)
def test_each_inbound_topic_decodes_with_its_codec(topic: str, payload: bytes, device: str) -> None:
    inbound = parse_inbound(topic)
    assert inbound is not None
    ctx = DecodeContext(inbound.tenant, inbound.device, 1_700_000_000_000)
    (event,) = decoder_for(inbound.codec)(payload, ctx)
    assert (event.tenant, event.device, dict(event.measurement.values)) == ("default", device, {"t": 7.0})


def test_an_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="no decoder"):
        decoder_for("xml")  # type: ignore[arg-type]
