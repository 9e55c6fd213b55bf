"""Golden vectors: device payloads and the exact events (or refusal reasons) they must give.

The vectors live in tests/unit/golden/*.json so that a firmware author can read them as
examples, and so that a change in what a payload means shows up as a reviewed data change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.protobuf import json_format

from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.protocol.codec.commands import encode_command_json
from fieldgate.protocol.codec.formats import decoder_for
from fieldgate.protocol.errors import EncodeError
from fieldgate.protocol.topics import Codec
from fieldgate.v1 import events_pb2 as pb

GOLDEN = Path(__file__).parent / "golden"
DECODER_FILES: dict[str, Codec] = {
    "json_events.json": "json",
    "sitewhere.json": "sitewhere",
    "protobuf.json": "protobuf",
    "sitewhere_protobuf.json": "sitewhere-protobuf",
}


def _load(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _payload(case: dict[str, Any]) -> bytes:
    if "payload_text" in case:
        return case["payload_text"].encode()  # type: ignore[no-any-return]
    if "payload_hex" in case:
        return bytes.fromhex(case["payload_hex"])
    if "payload_batch" in case:
        return json_format.ParseDict(case["payload_batch"], pb.EventBatch()).SerializeToString()
    return orjson.dumps(case["payload"])


def _cases(kind: str) -> list[Any]:
    params = []
    for name, fmt in DECODER_FILES.items():
        doc = _load(name)
        ctx = DecodeContext(**doc["context"])
        for case in doc[kind]:
            params.append(pytest.param(fmt, ctx, case, id=f"{fmt}: {case['name']}"))
    return params


def _as_dict(event: pb.Event) -> dict[str, Any]:
    return json_format.MessageToDict(event, preserving_proto_field_name=True)


@pytest.mark.parametrize(("fmt", "ctx", "case"), _cases("good"))
def test_good_payload_decodes_to_the_expected_events(
    fmt: Codec, ctx: DecodeContext, case: dict[str, Any]
) -> None:
    events = decoder_for(fmt)(_payload(case), ctx)
    expected = [json_format.ParseDict(e, pb.Event()) for e in case["events"]]
    assert [_as_dict(e) for e in events] == [_as_dict(e) for e in expected]


@pytest.mark.parametrize(("fmt", "ctx", "case"), _cases("bad"))
def test_bad_payload_is_refused_with_its_reason(fmt: Codec, ctx: DecodeContext, case: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as caught:
        decoder_for(fmt)(_payload(case), ctx)
    assert case["reason"] in caught.value.reason


def test_pinned_protobuf_bytes_match_what_protobuf_serializes() -> None:
    """The hex vectors are what any protobuf library must produce for these batches."""
    doc = _load("protobuf.json")
    pinned = {case["name"]: case for case in doc["good"] if "payload_hex" in case}
    first = pb.EventBatch(
        events=[
            pb.Event(
                alternate_id="a1",
                event_time_ms=1_700_000_000_000,
                measurement=pb.Measurement(values={"t": 21.5}),
            )
        ]
    )
    second = pb.EventBatch(events=[pb.Event(location=pb.Location(latitude=1.5, longitude=2.5))])
    vectors = [case["payload_hex"] for case in pinned.values()]
    assert vectors == [first.SerializeToString().hex(), second.SerializeToString().hex()]


COMMANDS = _load("commands.json")


@pytest.mark.parametrize("case", COMMANDS["good"], ids=lambda case: case["name"])
def test_command_message_is_byte_exact(case: dict[str, Any]) -> None:
    invocation = json_format.ParseDict(case["invocation"], pb.CommandInvocation())
    assert encode_command_json(invocation) == case["payload_text"].encode()


@pytest.mark.parametrize("case", COMMANDS["bad"], ids=lambda case: case["name"])
def test_broken_command_is_refused_with_its_reason(case: dict[str, Any]) -> None:
    invocation = json_format.ParseDict(case["invocation"], pb.CommandInvocation())
    with pytest.raises(EncodeError) as caught:
        encode_command_json(invocation)
    assert case["reason"] in str(caught.value)
