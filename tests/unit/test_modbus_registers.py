"""Register arithmetic of the Modbus adapter: golden vectors, round trips, read planning, CRC."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU

from fieldgate.edge.adapters.modbus.config import RegisterConfig
from fieldgate.edge.adapters.modbus.registers import (
    FrameCheck,
    RegisterValueError,
    check_rtu_response,
    crc16,
    decode_block,
    decode_point,
    encode_value,
    plan_reads,
    raw_from_words,
    rtu_frame,
    words_from_raw,
)


def reg(name: str, type: str = "holding", address: int = 0, **kw: object) -> RegisterConfig:
    return RegisterConfig.model_validate({"name": name, "type": type, "address": address, **kw})


@pytest.mark.parametrize(
    ("data_type", "order", "words", "raw"),
    [
        ("int16", "big", [0xFF85], -123),
        ("uint16", "big", [0xFF85], 65413),
        ("int32", "big", [0xFFFF, 0xFFFE], -2),
        ("int32", "little", [0xFFFE, 0xFFFF], -2),
        ("uint32", "big", [0x0001, 0x0002], 65538),
        ("uint32", "little", [0x0002, 0x0001], 65538),
        ("float32", "big", [0x4148, 0x0000], 12.5),
        ("float32", "little", [0x0000, 0x4148], 12.5),
    ],
)
def test_golden_words(data_type: str, order: str, words: list[int], raw: float) -> None:
    assert raw_from_words(data_type, order, words) == raw
    assert words_from_raw(data_type, order, raw) == words


def test_scale_and_offset_apply_to_the_raw_value() -> None:
    r = reg("t", data_type="int16", scale=0.1, offset=-40.0)
    assert decode_point(r, words=[0xFF85]) == pytest.approx(-52.3)
    assert encode_value("int16", "big", 0.1, -40.0, -52.3) == [0xFF85]


def test_nan_float_is_a_decode_error_not_a_value() -> None:
    with pytest.raises(RegisterValueError):
        decode_point(reg("f", data_type="float32"), words=[0x7FC0, 0x0000])


@pytest.mark.parametrize(
    ("dt", "value", "reason"),
    [
        ("uint16", -1, "does not fit"),
        ("int16", 40000, "does not fit"),
        ("uint16", 1.5, "multiple of the scale"),
        ("uint16", "7", "not a number"),
        ("uint16", True, "not a number"),
        ("float32", math.inf, "not finite"),
        ("bool", 2, "not a boolean"),
    ],
)
def test_values_that_do_not_fit_are_refused(dt: str, value: object, reason: str) -> None:
    with pytest.raises(RegisterValueError, match=reason):
        encode_value(dt, "big", 1.0, 0.0, value)


@given(
    st.sampled_from(["int16", "uint16", "int32", "uint32"]),
    st.sampled_from(["big", "little"]),
    st.integers(min_value=-(2**31), max_value=2**32 - 1),
)
def test_integer_round_trip(dt: str, order: str, raw: int) -> None:
    bounds = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1)}
    low, high = bounds.get(dt, (0, 2**32 - 1))
    if not low <= raw <= high:
        with pytest.raises(RegisterValueError):
            encode_value(dt, order, 1.0, 0.0, raw)
        return
    words = encode_value(dt, order, 1.0, 0.0, raw)
    assert isinstance(words, list)
    assert raw_from_words(dt, order, words) == raw


def test_plan_groups_adjacent_registers_of_one_type() -> None:
    regs = [
        reg("a", "input", 0, data_type="int16"),
        reg("b", "input", 1),
        reg("c", "input", 2, data_type="uint32"),
        reg("d", "input", 10),
        reg("e", "holding", 0),
        reg("f", "coil", 3),
        reg("g", "coil", 4),
    ]
    blocks = [(b.type, b.address, b.count, [m.name for m in b.members]) for b in plan_reads(regs)]
    assert blocks == [
        ("coil", 3, 2, ["f", "g"]),
        ("holding", 0, 1, ["e"]),
        ("input", 0, 4, ["a", "b", "c"]),
        ("input", 10, 1, ["d"]),
    ]


def test_plan_respects_the_125_register_limit() -> None:
    regs = [reg(f"r{i}", "holding", i) for i in range(200)]
    blocks = plan_reads(regs)
    assert [(b.address, b.count) for b in blocks] == [(0, 125), (125, 75)]


def test_one_bad_point_does_not_spoil_the_block() -> None:
    regs = [reg("t", "input", 0, data_type="int16", scale=0.1), reg("f", "input", 1, data_type="float32")]
    (block,) = plan_reads(regs)
    decoded = decode_block(block, [215, 0x7F80, 0x0000])  # f = +inf
    assert decoded.values == {"t": pytest.approx(21.5)}
    assert [name for name, _ in decoded.errors] == ["f"]


def test_crc_matches_pymodbus_and_the_spec_example() -> None:
    # Modbus spec example: 01 03 00 00 00 0A → CRC C5 CD (low byte first).
    assert rtu_frame(1, bytes.fromhex("030000000a")) == bytes.fromhex("01030000000ac5cd")
    for body in (b"\x01\x03\x02\x00\xd7", b"\x11\x04\x04\x01\x02\x03\x04"):
        assert crc16(body) == int.from_bytes(FramerRTU.compute_CRC(body).to_bytes(2, "big"), "little")


def test_response_classification() -> None:
    ok = rtu_frame(1, bytes.fromhex("030200d7"))
    assert check_rtu_response(ok) is FrameCheck.OK
    assert check_rtu_response(ok[:-1]) is FrameCheck.INCOMPLETE
    assert check_rtu_response(ok[:2]) is FrameCheck.INCOMPLETE
    assert check_rtu_response(ok[:-1] + bytes([ok[-1] ^ 0xFF])) is FrameCheck.BAD_CRC
    assert check_rtu_response(rtu_frame(1, bytes([0x83, 0x02]))) is FrameCheck.OK
    assert check_rtu_response(rtu_frame(1, bytes.fromhex("0600010003"))) is FrameCheck.OK
    assert check_rtu_response(bytes.fromhex("012b0000")) is FrameCheck.UNKNOWN
