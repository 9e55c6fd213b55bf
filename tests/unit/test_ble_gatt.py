"""GATT characteristic decoders: golden byte vectors from the Bluetooth spec and property tests."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldgate.protocol.codec.gatt import (
    FieldSpec,
    Reading,
    StructDecoder,
    decode_battery_level,
    decode_heart_rate,
    decode_humidity,
    decode_temperature,
    normalize_uuid,
    standard_decoder,
)
from fieldgate.protocol.errors import DecodeError
from fieldgate.sims import ble_gatt as fw


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes.fromhex("6608"), 21.5),  # 0x0866 = 2150
        (bytes.fromhex("0000"), 0.0),
        (bytes.fromhex("18fc"), -10.0),  # 0xfc18 = -1000
        (bytes.fromhex("ff7f"), 327.67),
    ],
)
def test_temperature_golden(payload: bytes, expected: float) -> None:
    assert decode_temperature(payload) == [Reading("temperature", expected, "°C")]


def test_temperature_unknown_value_gives_no_reading() -> None:
    assert decode_temperature(bytes.fromhex("0080")) == []


def test_humidity_golden_and_limits() -> None:
    assert decode_humidity(bytes.fromhex("c409")) == [Reading("humidity", 25.0, "%")]  # 2500
    assert decode_humidity(bytes.fromhex("1027")) == [Reading("humidity", 100.0, "%")]
    assert decode_humidity(bytes.fromhex("ffff")) == []
    with pytest.raises(DecodeError, match="out of range"):
        decode_humidity(bytes.fromhex("1127"))


def test_battery_level_golden_and_limits() -> None:
    assert decode_battery_level(b"\x64") == [Reading("battery_level", 100.0, "%")]
    assert decode_battery_level(b"\x00") == [Reading("battery_level", 0.0, "%")]
    with pytest.raises(DecodeError, match="out of range"):
        decode_battery_level(b"\x65")


def test_heart_rate_uint8_minimal() -> None:
    assert decode_heart_rate(bytes.fromhex("0048")) == [Reading("heart_rate", 72.0, "bpm")]


def test_heart_rate_uint16_contact_energy_rr() -> None:
    # flags 0x1f: uint16 bpm, contact supported + detected, energy, RR; bpm 300, 1234 kJ, RR 1024 and 512
    payload = bytes.fromhex("1f2c01d20400040002")
    assert decode_heart_rate(payload) == [
        Reading("heart_rate", 300.0, "bpm"),
        Reading("sensor_contact", 1.0),
        Reading("energy_expended", 1234.0, "kJ"),
        Reading("rr_interval_0", 1.0, "s"),
        Reading("rr_interval_1", 0.5, "s"),
    ]


def test_heart_rate_contact_supported_not_detected() -> None:
    assert decode_heart_rate(bytes.fromhex("0450"))[1] == Reading("sensor_contact", 0.0)


@pytest.mark.parametrize(
    "payload",
    ["", "00", "0148", "004800", "1048", "104800", "084801", "00480000"],
)
def test_heart_rate_wrong_lengths_are_rejected(payload: str) -> None:
    with pytest.raises(DecodeError, match="length"):
        decode_heart_rate(bytes.fromhex(payload))


@pytest.mark.parametrize(
    ("decoder", "payload"),
    [
        (decode_temperature, b"\x01"),
        (decode_temperature, b"\x01\x02\x03"),
        (decode_humidity, b""),
        (decode_battery_level, b"\x10\x00"),
    ],
)
def test_wrong_length_raises_decode_error_naming_it(decoder: object, payload: bytes) -> None:
    with pytest.raises(DecodeError, match="wrong length"):
        decoder(payload)  # type: ignore[operator]


def test_uuid_forms_normalize_to_bluez_form() -> None:
    full = "00002a6e-0000-1000-8000-00805f9b34fb"
    assert normalize_uuid("0x2A6E") == full
    assert normalize_uuid("2a6e") == full
    assert normalize_uuid(full.upper()) == full
    assert standard_decoder("2A19") is decode_battery_level
    with pytest.raises(ValueError):
        normalize_uuid("not-a-uuid")


def test_custom_layout_golden() -> None:
    dec = StructDecoder(
        [
            FieldSpec("temperature", "i16", scale=0.01, unit="°C"),
            FieldSpec("pressure", "u32", unit="Pa"),
            FieldSpec("co2", "u16", unit="ppm"),
            FieldSpec("status", "u8"),
        ]
    )
    assert dec.size == 9
    payload = struct.pack("<hIHB", -512, 101_325, 612, 3)
    assert dec(payload) == [
        Reading("temperature", -5.12, "°C"),
        Reading("pressure", 101_325.0, "Pa"),
        Reading("co2", 612.0, "ppm"),
        Reading("status", 3.0),
    ]
    with pytest.raises(DecodeError, match="expected 9 bytes, got 10"):
        dec(payload + b"\x00")


def test_custom_layout_big_endian_offset_and_float() -> None:
    dec = StructDecoder(
        [FieldSpec("level", "u16", scale=0.5, offset=-10), FieldSpec("ratio", "f32")], byte_order="big"
    )
    assert dec(bytes.fromhex("0064") + struct.pack(">f", 0.25)) == [
        Reading("level", 40.0),
        Reading("ratio", 0.25),
    ]
    with pytest.raises(DecodeError, match="finite"):
        dec(bytes.fromhex("0064") + struct.pack(">f", math.nan))


def test_custom_layout_rejects_bad_layouts() -> None:
    with pytest.raises(ValueError):
        StructDecoder([])
    with pytest.raises(ValueError):
        StructDecoder([FieldSpec("a", "u8"), FieldSpec("a", "u16")])
    with pytest.raises(ValueError):
        StructDecoder([FieldSpec("a", "u64")])  # type: ignore[arg-type]


# ---------------------------------------------------------------- properties (firmware encoders)


@given(st.integers(-27315, 32767))
def test_temperature_round_trips_firmware_encoding(centi: int) -> None:
    assert decode_temperature(fw.encode_temperature(centi / 100)) == [
        Reading("temperature", centi / 100, "°C")
    ]


@given(st.integers(0, 10_000))
def test_humidity_round_trips(centi: int) -> None:
    assert decode_humidity(fw.encode_humidity(centi / 100))[0].value == centi / 100


@given(
    bpm=st.integers(0, 0xFFFF),
    energy=st.none() | st.integers(0, 0xFFFF),
    rr=st.lists(st.integers(0, 0xFFFF), max_size=8),
    contact=st.none() | st.booleans(),
    wide=st.booleans(),
)
def test_heart_rate_round_trips(
    bpm: int, energy: int | None, rr: list[int], contact: bool | None, wide: bool
) -> None:
    payload = fw.encode_heart_rate(
        bpm, energy_kj=energy, rr_intervals_s=tuple(r / 1024 for r in rr), contact=contact, wide=wide
    )
    got = {r.name: r.value for r in decode_heart_rate(payload)}
    assert got["heart_rate"] == bpm
    assert got.get("energy_expended") == (None if energy is None else energy)
    assert [got[f"rr_interval_{i}"] for i in range(len(rr))] == [r / 1024 for r in rr]
    assert got.get("sensor_contact") == (None if contact is None else float(contact))


@given(st.binary(max_size=40))
def test_decoders_never_fail_other_than_decode_error(data: bytes) -> None:
    for decoder in (decode_temperature, decode_humidity, decode_battery_level, decode_heart_rate):
        try:
            for r in decoder(data):
                assert math.isfinite(r.value)
        except DecodeError:
            pass


@given(
    st.lists(st.sampled_from(["u8", "i8", "u16", "i16", "u32", "i32", "f32"]), min_size=1, max_size=8),
    st.data(),
)
def test_struct_decoder_accepts_exactly_its_size(types: list[str], data: st.DataObject) -> None:
    dec = StructDecoder([FieldSpec(f"f{i}", t) for i, t in enumerate(types)])  # type: ignore[arg-type]
    payload = data.draw(st.binary(min_size=0, max_size=dec.size + 3))
    try:
        readings = dec(payload)
    except DecodeError as err:
        assert len(payload) != dec.size or "finite" in err.reason
    else:
        assert len(payload) == dec.size and len(readings) == len(types)
