"""cloud.bus.payloads: the stage → message map, the descriptor set, kcat frame decoding."""

from __future__ import annotations

import io
import json

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from fieldgate.cloud.bus import STAGES
from fieldgate.cloud.bus.payloads import (
    decode_stream,
    decode_value,
    descriptor_set,
    read_kcat_frames,
    stage_of_topic,
)
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.v1 import events_pb2 as pb


def batch() -> pb.EventBatch:
    ev = pb.Event(tenant="acme", device="d-1", alternate_id="a-1")
    ev.measurement.values["t"] = 21.5
    return pb.EventBatch(events=[ev])


def test_the_descriptor_set_alone_decodes_every_stage_payload() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:  # dependencies first, as protoc expects
        pool.Add(f)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("fieldgate.v1.EventBatch"))
    decoded = cls.FromString(batch().SerializeToString())
    assert decoded.events[0].measurement.values["t"] == 21.5  # type: ignore[attr-defined]
    for name in ("fieldgate.v1.Event", "fieldgate.v1.FailedDecode"):
        pool.FindMessageTypeByName(name)


def test_kcat_frames_decode_to_json_lines() -> None:
    a = batch().SerializeToString()
    stream = io.BytesIO(b"%d:%s-1:%d:%s" % (len(a), a, len(a), a))
    out = io.StringIO()
    assert decode_stream("persisted", stream, out) == 3
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["events"][0]["device"] == "d-1" and lines[1] is None and lines[2] == lines[0]
    assert list(read_kcat_frames(io.BytesIO(b""))) == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"abc", "expected kcat"),
        (b"12", "inside a size prefix"),
        (b"10:abc", "inside a record"),
        (b"99999999999:", "beyond"),
        (b"1234567890123456:", "expected kcat"),
    ],
)
def test_bad_kcat_output_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        decode_stream("persisted", io.BytesIO(data), io.StringIO())


def test_a_value_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="EventBatch"):
        decode_value("persisted", b"\xff\xff\xff")
    with pytest.raises(InvalidRequest, match="unknown stage"):
        decode_value("nope", b"")


def test_stage_of_topic() -> None:
    for stage in STAGES:
        assert stage_of_topic(f"fieldgate.tenant.acme.{stage}") == stage
    for bad in ("fieldgate.tenant.acme.other", "persisted", "x.persisted"):
        with pytest.raises(InvalidRequest):
            stage_of_topic(bad)


def test_the_cli_stops_quietly_when_its_reader_goes_away() -> None:
    """`kcat ... | fieldgate cloud decode ... | head -1`: no BrokenPipeError traceback."""
    import subprocess
    import sys

    value = batch().SerializeToString()
    data = b"%d:%s" % (len(value), value) * 20_000
    done = subprocess.run(
        f"{sys.executable} -m fieldgate.cli cloud decode --stage persisted | head -1",
        shell=True,
        input=data,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert json.loads(done.stdout)["events"][0]["device"] == "d-1"
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr
