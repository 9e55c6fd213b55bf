"""The serial protocol's pure codecs: COBS, CRC-16, both framers and the binary message set.

Golden byte vectors are the ones printed in docs/protocols/serial.md (a firmware author checks
their encoder against the same bytes); property tests show that any input whatsoever either
decodes or raises the codec's own error, always makes progress, and that the framers are back
in step after garbage.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.protocol.codec.cobs import cobs_decode, cobs_encode, crc16_ccitt_false
from fieldgate.protocol.codec.serial_binary import (
    Ack,
    Alert,
    Command,
    CommandResponse,
    Hello,
    Location,
    Measurement,
    NamedMeasurement,
    encode_message,
    parse_message,
    to_event,
)
from fieldgate.protocol.codec.serial_frames import (
    MAX_ENCODED,
    BinaryFramer,
    FrameError,
    LineFramer,
    encode_frame,
)
from fieldgate.v1 import events_pb2 as pb

# ---------------------------------------------------------------------- golden vectors (docs)

# docs/protocols/serial.md, "Worked example": temperature 21.5 on channel 0, humidity 45.5 on 1.
DOC_BODY = bytes.fromhex("02 00 02 00 00 00 ac 41 01 00 00 36 42")
DOC_FRAME = bytes.fromhex("02 02 02 02 01 01 04 ac 41 01 01 05 36 42 d7 49 00")
# ack of tag 7, and the ping command with tag 7
DOC_PING = bytes.fromhex("03 80 07 06 04 70 69 6e 67 03 c3 8d 00")
DOC_ACK = bytes.fromhex("03 06 07 01 03 26 c9 00")
# the response {"pong": 1} to tag 7
DOC_PONG = bytes.fromhex("02 07 02 07 07 01 04 70 6f 6e 67 01 05 80 3f d6 e5 00")


def test_crc_check_value() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        (b"", b"\x01"),
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
    ],
)
def test_cobs_vectors(raw: bytes, encoded: bytes) -> None:
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


def test_cobs_decode_accepts_encoders_that_omit_the_final_empty_block() -> None:
    assert cobs_decode(b"\xff" + bytes(range(1, 255))) == bytes(range(1, 255))


def test_documented_measurement_frame() -> None:
    msg = Measurement(((0, 21.5), (1, 45.5)))
    assert encode_message(msg) == DOC_BODY
    assert encode_frame(DOC_BODY) == DOC_FRAME
    consumed, body = BinaryFramer().decode(bytearray(DOC_FRAME))
    assert (consumed, body) == (len(DOC_FRAME), DOC_BODY)
    assert parse_message(DOC_BODY) == msg


def test_documented_command_and_ack_frames() -> None:
    assert encode_frame(encode_message(Command(7, "ping"))) == DOC_PING
    assert encode_frame(encode_message(Ack(7))) == DOC_ACK
    assert encode_frame(encode_message(CommandResponse(7, (("pong", 1.0),)))) == DOC_PONG


def test_event_from_measurement_uses_channel_names_and_reports_unnamed_channels() -> None:
    ctx = DecodeContext("default", "mcu-1", 1_700_000_000_000)
    msg = parse_message(DOC_BODY)
    assert isinstance(msg, Measurement)
    event = to_event(msg, ctx, {0: "temperature"})
    assert dict(event.measurement.values) == {"temperature": 21.5, "ch1": 45.5}
    assert (event.tenant, event.device, event.event_time_ms) == ("default", "mcu-1", 1_700_000_000_000)
    assert event.alternate_id == ""


def test_float32_values_read_as_the_decimals_firmware_meant() -> None:
    body = encode_message(Measurement(((0, 21.3),), ts_ms=1_700_000_000_123))
    msg = parse_message(body)
    assert isinstance(msg, Measurement)
    event = to_event(msg, DecodeContext("t", "d", 5), {0: "temperature"})
    assert event.measurement.values["temperature"] == 21.3
    assert event.event_time_ms == 1_700_000_000_123


@pytest.mark.parametrize(
    "msg",
    [
        Hello("mcu-1"),
        Measurement(((0, 1.0), (7, -2.5)), ts_ms=12345),
        NamedMeasurement((("temperature", 21.5), ("rpm", 1500.0))),
        Location(52.5200066, 13.404954, 34.5, ts_ms=1),
        Location(-33.8688, 151.2093),
        Alert(3, "overheat", "motor at 92 C"),
        Ack(65535, 1),
        CommandResponse(9, (("interval_s", 5.0),), ts_ms=77),
        Command(1, "set-interval", (("seconds", 5.0),)),
    ],
)
def test_every_message_round_trips(msg: object) -> None:
    body = encode_message(msg)  # type: ignore[arg-type]
    assert parse_message(body) == msg
    framer = BinaryFramer()
    assert framer.decode(bytearray(encode_frame(body))) == (len(encode_frame(body)), body)


def test_events_of_each_kind() -> None:
    ctx = DecodeContext("default", "mcu-1", 10)
    loc = to_event(Location(52.52, 13.405, 34.5), ctx, {})
    assert (loc.location.latitude, loc.location.longitude, loc.location.elevation) == (52.52, 13.405, 34.5)
    alert = to_event(Alert(4, "overheat", "hot"), ctx, {})
    assert alert.alert.level == pb.ALERT_LEVEL_CRITICAL and alert.alert.alert_type == "overheat"
    answer = to_event(CommandResponse(3, (("pong", 1.0),)), ctx, {}, invocation="inv-9")
    assert answer.command_response.invocation == "inv-9"
    assert answer.command_response.response_json == '{"pong":1.0}'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x7e", "unknown message type 0x7E"),
        (b"\x02\x00\x00", "no values"),
        (b"\x02\x00\x01\x00\x00\x00", "ends inside"),
        (b"\x02\x00\x01\x00\x00\x00\xc0\x7f", "not a finite number"),  # NaN
        (b"\x02\x00\x01\x00\x00\x00\xac\x41\x99", "unexpected byte"),
        (b"\x05\x00\x09\x01a\x00", "level 9"),
        (b"\x04\x00" + (1_000_000_000).to_bytes(4, "little") + b"\x00\x00\x00\x00", "latitude"),
        (b"\x03\x00\x01\x02\xff\xfe\x00\x00\x00\x00", "not UTF-8"),
    ],
)
def test_malformed_messages_name_the_problem(body: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        parse_message(body)


# ---------------------------------------------------------------------- binary framer


def drain(framer: BinaryFramer | LineFramer, data: bytes) -> tuple[list[bytes], list[str]]:
    """Feed ``data`` as one buffer; return frames and error kinds (asserting progress)."""
    buf = bytearray(data)
    frames: list[bytes] = []
    kinds: list[str] = []
    for _ in range(len(data) + 2):
        try:
            consumed, frame = framer.decode(buf)
        except FrameError as err:
            assert err.consumed > 0
            kinds.append(err.kind)
            del buf[: err.consumed]
            continue
        if consumed == 0:
            return frames, kinds
        del buf[:consumed]
        if frame is not None:
            frames.append(frame)
    raise AssertionError("framer made no progress")


def test_binary_fault_kinds_and_resync() -> None:
    good = encode_frame(DOC_BODY)
    bad_crc = bytearray(good)
    bad_crc[-2] ^= 0x01  # inside the COBS-coded CRC byte (non-zero either way)
    stream = (
        good
        + b"\x00\x13\x37\x00"  # two stray bytes: garbage
        + good[:8]  # a frame that lost its tail ...
        + b"\x00"  # ... and the sender's resync delimiter
        + bytes(bad_crc)
        + b"\x55" * (MAX_ENCODED + 40)  # no delimiter for too long
        + b"\x00"
        + good
    )
    frames, kinds = drain(BinaryFramer(), stream)
    assert frames == [DOC_BODY, DOC_BODY]
    assert kinds == ["garbage", "truncated", "crc", "oversize"]


def test_binary_framer_waits_for_the_rest_of_a_frame() -> None:
    framer = BinaryFramer()
    buf = bytearray(DOC_FRAME[:5])
    assert framer.decode(buf) == (0, None)
    buf += DOC_FRAME[5:]
    assert framer.decode(buf) == (len(DOC_FRAME), DOC_BODY)


def test_oversize_is_reported_once_while_it_streams_in() -> None:
    framer = BinaryFramer()
    kinds: list[str] = []
    frames: list[bytes] = []
    for chunk in [b"\x55" * 300] * 10 + [b"\x00" + DOC_FRAME]:
        f, k = drain(framer, chunk)
        frames += f
        kinds += k
    # chunks of 300 bytes never reach the limit on their own, so the framer keeps nothing of them
    assert frames == [DOC_BODY]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=300), max_size=8))
def test_binary_round_trip_of_any_bodies(bodies: list[bytes]) -> None:
    bodies = [b for b in bodies if b]
    stream = b"".join(encode_frame(b) for b in bodies)
    frames, kinds = drain(BinaryFramer(), stream)
    assert frames == bodies and kinds == []


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_binary_garbage_raises_only_frame_errors_and_resyncs(garbage: bytes) -> None:
    framer = BinaryFramer()
    drain(framer, garbage)  # anything but FrameError would fail here
    # after the garbage, a delimiter and a good frame come through
    frames, _ = drain(framer, b"\x00" + DOC_FRAME)
    assert frames[-1:] == [DOC_BODY]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_parse_message_raises_only_decode_error(body: bytes) -> None:
    try:
        parse_message(body)
    except DecodeError:
        pass


# ---------------------------------------------------------------------- line framer


def test_lines_oversize_blank_and_crlf() -> None:
    framer = LineFramer(max_line=64)
    stream = b'{"a":1}\r\n\n   \n' + b"x" * 200 + b"\n" + b'{"b":2}\n'
    frames, kinds = drain(framer, stream)
    assert frames == [b'{"a":1}', b'{"b":2}']
    assert kinds == ["oversize"]


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=3000), st.lists(st.binary(max_size=100).filter(lambda b: b"\n" not in b and b.strip()))
)
def test_lines_after_garbage(garbage: bytes, lines: list[bytes]) -> None:
    framer = LineFramer(max_line=128)
    drain(framer, garbage)
    frames, kinds = drain(framer, b"\n" + b"".join(line + b"\n" for line in lines))
    assert [f for f in frames] == [line.rstrip(b"\r") for line in lines]
    assert kinds == []
