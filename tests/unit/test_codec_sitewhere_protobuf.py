"""SiteWhere's protobuf messages: fieldgate's copies of SiteWhere's proto definitions give the
same bytes as the golden vectors assembled by hand from SiteWhere's published files, and the
framing helpers refuse what SiteWhere's parseDelimitedFrom would choke on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fieldgate.protocol.codec import DecodeError
from fieldgate.protocol.codec.sitewhere_commands import encode_sitewhere_command_json
from fieldgate.protocol.codec.sitewhere_protobuf import read_delimited, write_delimited
from fieldgate.protocol.errors import EncodeError
from fieldgate.sitewhere import sitewhere1_pb2 as sw1
from fieldgate.sitewhere import sitewhere3_pb2 as sw3
from fieldgate.v1 import events_pb2 as pb

GOLDEN = json.loads(
    (Path(__file__).parent / "golden" / "sitewhere_protobuf.json").read_text(encoding="utf-8")
)
UUID = "5b7a8d1c-4b0e-4c7e-9a57-3c2f7d1e0a11"


def _pinned(name_starts: str) -> bytes:
    case = next(c for c in GOLDEN["good"] if c["name"].startswith(name_starts))
    return bytes.fromhex(case["payload_hex"])


def _s(text: str) -> sw3.GOptionalString:
    return sw3.GOptionalString(value=text)


def test_sitewhere3_classes_write_the_pinned_bytes() -> None:
    ev = sw3.DeviceEvent
    header = ev.Header(command=ev.SEND_ACK, deviceToken=_s("sw-pb-1"), originator=_s(UUID))
    ack = ev.DeviceAcknowledge(message=_s("interval set"))
    assert write_delimited(header) + write_delimited(ack) == _pinned("3.x SEND_ACK")

    header = ev.Header(command=ev.SEND_ALERT, deviceToken=_s("sw-pb-1"))
    alert = ev.DeviceAlert(
        alertType=_s("door.open"),
        level=ev.Warning,
        alertMessage=_s("Door 3 open"),
        eventDate=sw3.GOptionalFixed64(value=1704067200000),
    )
    assert write_delimited(header) + write_delimited(alert) == _pinned("3.x SEND_ALERT")


def test_sitewhere1_classes_write_the_pinned_bytes() -> None:
    header = sw1.SiteWhere.Header(command=sw1.SiteWhere.DEVICELOCATION)
    location = sw1.SiteWhere.DeviceLocation(
        hardwareId="ard-1", latitude=33.75, longitude=-84.39, elevation=300.0, eventDate=1704067200000
    )
    assert write_delimited(header) + write_delimited(location) + b"\x00" == _pinned("1.x DEVICELOCATION")


def test_read_delimited_walks_a_message_and_refuses_broken_prefixes() -> None:
    data = b"\x02ab\x00"
    assert read_delimited(data, 0, "x") == (b"ab", 3)
    assert read_delimited(data, 3, "y") == (b"", 4)
    with pytest.raises(DecodeError, match="missing"):
        read_delimited(data, 4, "z")
    with pytest.raises(DecodeError, match="truncated length prefix"):
        read_delimited(b"\x80", 0, "x")
    with pytest.raises(DecodeError, match="bad length prefix"):
        read_delimited(b"\xff" * 11, 0, "x")
    with pytest.raises(DecodeError, match="only 1 follow"):
        read_delimited(b"\x05a", 0, "x")


def test_sitewhere_json_command_execution_is_byte_exact() -> None:
    invocation = pb.CommandInvocation(
        invocation="inv-7", command="set-interval", params_json='{"seconds": 30, "fast": true, "mode": "eco"}'
    )
    assert encode_sitewhere_command_json("sw-1", invocation) == (
        b'{"command":{"command":{"name":"set-interval"},'
        b'"invocation":{"id":"inv-7","eventType":"CommandInvocation","initiator":"REST","target":"Assignment",'
        b'"parameterValues":{"seconds":"30","fast":"true","mode":"eco"}},'
        b'"parameters":{"seconds":30,"fast":true,"mode":"eco"}},'
        b'"nestingContext":{"gateway":{"token":"sw-1"}}}'
    )


@pytest.mark.parametrize(
    ("invocation", "reason"),
    [
        (pb.CommandInvocation(command="ping"), "no invocation id"),
        (pb.CommandInvocation(invocation="i"), "no command name"),
        (pb.CommandInvocation(invocation="i", command="c", params_json="{"), "params are not JSON"),
        (pb.CommandInvocation(invocation="i", command="c", params_json="[1]"), "must be a JSON object"),
    ],
)
def test_broken_sitewhere_command_is_refused_with_its_reason(
    invocation: pb.CommandInvocation, reason: str
) -> None:
    with pytest.raises(EncodeError, match=reason):
        encode_sitewhere_command_json("sw-1", invocation)
