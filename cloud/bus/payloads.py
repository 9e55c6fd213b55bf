"""What the records of each stage's topic hold, for readers outside fieldgate (kcat & co.).

Every stage topic carries protobuf messages of ``fieldgate.v1`` (proto/fieldgate/v1/): an
``EventBatch`` (one device's events) on ``decoded``, ``unregistered``, ``enriched`` and
``persisted``; one ``Event`` (a command invocation) on ``command-invocations`` and
``undelivered-commands``; a ``FailedDecode`` on ``failed-decode``.

:func:`descriptor_set` is the serialized ``FileDescriptorSet`` of those messages (what
``protoc --descriptor_set_in`` and other protobuf tools need to decode them without the .proto
files); ``fieldgate cloud descriptors`` writes it. :func:`read_kcat_frames` and
:func:`decode_value` are ``fieldgate cloud decode``: they turn the output of
``kcat -C ... -f '%S:%s'`` (each record's size, a colon, its bytes) into JSON lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from google.protobuf import descriptor_pb2, json_format
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError, Message

from fieldgate.cloud.bus import (
    COMMAND_INVOCATIONS,
    DECODED,
    ENRICHED,
    FAILED_DECODE,
    PERSISTED,
    STAGES,
    UNDELIVERED_COMMANDS,
    UNREGISTERED,
)
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2

STAGE_MESSAGES: dict[str, type[Message]] = {
    DECODED: pb.EventBatch,
    UNREGISTERED: pb.EventBatch,
    ENRICHED: pb.EventBatch,
    PERSISTED: pb.EventBatch,
    COMMAND_INVOCATIONS: pb.Event,
    UNDELIVERED_COMMANDS: pb.Event,
    FAILED_DECODE: pb.FailedDecode,
}
assert set(STAGE_MESSAGES) == set(STAGES)

MAX_RECORD_BYTES = 64 * 1024 * 1024  # a size prefix beyond this is not kcat output


def descriptor_set() -> bytes:
    """The FileDescriptorSet of fieldgate.v1 (events, model, services) and their imports,
    dependencies first."""
    files = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        files.file.append(proto)

    add(services_pb2.DESCRIPTOR)  # imports events.proto and model.proto
    return files.SerializeToString()


def message_type(stage: str) -> type[Message]:
    try:
        return STAGE_MESSAGES[stage]
    except KeyError:
        raise InvalidRequest(f"unknown stage {stage!r}; one of {', '.join(STAGES)}") from None


def stage_of_topic(topic: str) -> str:
    """The stage of a ``<prefix>.tenant.<tenant>.<stage>`` topic (any prefix)."""
    stage = topic.rpartition(".")[2]
    if ".tenant." not in topic or stage not in STAGES:
        raise InvalidRequest(f"not a fieldgate stage topic: {topic!r}")
    return stage


def decode_value(stage: str, value: bytes) -> dict[str, Any]:
    """A record's value as the JSON form of its protobuf message (InvalidRequest if it is not one)."""
    cls = message_type(stage)
    try:
        msg = cls.FromString(value)
    except DecodeError as err:
        raise InvalidRequest(f"not a {cls.DESCRIPTOR.full_name}: {err}") from err
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def read_kcat_frames(stream: IO[bytes]) -> Iterator[bytes | None]:
    """Records from kcat's ``-f '%S:%s'`` output: ``<size>:<bytes>`` repeated (size -1 = a
    record without a value, yielded as None). InvalidRequest on anything else."""
    while True:
        digits = bytearray()
        while True:
            ch = stream.read(1)
            if not ch:
                if digits:
                    raise InvalidRequest("input ends inside a size prefix")
                return
            if ch == b":":
                break
            if not (ch.isdigit() or (ch == b"-" and not digits)) or len(digits) > 12:
                raise InvalidRequest(
                    f"expected kcat -f '%S:%s' output (size, ':', bytes); got {bytes(digits + ch)!r}"
                )
            digits += ch
        size = int(digits)
        if size < 0:
            yield None
            continue
        if size > MAX_RECORD_BYTES:
            raise InvalidRequest(f"record size {size} is beyond {MAX_RECORD_BYTES} bytes")
        value = stream.read(size)
        if len(value) != size:
            raise InvalidRequest(f"input ends inside a record ({len(value)} of {size} bytes)")
        yield value


def decode_stream(stage: str, stream: IO[bytes], out: IO[str]) -> int:
    """Decode every kcat frame of ``stream`` into one JSON line on ``out``; returns the count."""
    message_type(stage)  # fail on a bad stage before reading anything
    count = 0
    for value in read_kcat_frames(stream):
        line = None if value is None else decode_value(stage, value)
        out.write(json.dumps(line, sort_keys=True) + "\n")
        count += 1
    return count
