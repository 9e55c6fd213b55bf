"""External consumers: the documented kcat commands (docs/operations/kafka.md) against a real
Kafka, decoded with ``fieldgate cloud decode`` and with protoc and ``fieldgate cloud descriptors``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fieldgate.cloud.bus import FAILED_DECODE, PERSISTED, Message, topic_name
from fieldgate.cloud.bus.kafka import KafkaBus
from fieldgate.devservers import KafkaServer
from fieldgate.v1 import events_pb2 as pb

pytestmark = pytest.mark.distributed

KCAT = shutil.which("kcat")
PROTOC = shutil.which("protoc")


def _batch(device: str, i: int) -> pb.EventBatch:
    ev = pb.Event(tenant="acme", device=device, alternate_id=f"{device}-{i}")
    ev.measurement.values["t"] = float(i)
    return pb.EventBatch(events=[ev])


def _kcat(bootstrap: str, topic: str, *args: str) -> bytes:
    assert KCAT is not None, "kcat (Debian package kcat) is installed by scripts/setup.sh"
    cmd = [KCAT, "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q", *args]
    return subprocess.run(cmd, check=True, capture_output=True, timeout=60).stdout


def _fieldgate(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "fieldgate.cli", *args], input=stdin, capture_output=True, timeout=60
    )


async def test_kcat_reads_a_stage_topic_and_fieldgate_decodes_it(kafka: KafkaServer, tmp_path: Path) -> None:
    prefix = f"k{uuid.uuid4().hex[:10]}"
    persisted = topic_name("acme", PERSISTED, prefix)
    failed = topic_name("acme", FAILED_DECODE, prefix)
    sent = [_batch(f"dev-{i % 3}", i) for i in range(12)]
    async with KafkaBus(kafka.bootstrap, prefix=prefix, partitions=3) as bus:
        await bus.publish(
            persisted, [Message(key=b.events[0].device.encode(), value=b.SerializeToString()) for b in sent]
        )
        dead = pb.FailedDecode(tenant="acme", source="mqtt", reason="bad json", payload=b"{oops")
        await bus.publish(failed, [Message(key=b"dev-x", value=dead.SerializeToString())])

    # kcat -f '%S:%s' | fieldgate cloud decode --stage persisted → one JSON object per record.
    raw = await asyncio.to_thread(_kcat, kafka.bootstrap, persisted, "-f", "%S:%s")
    result = _fieldgate("cloud", "decode", "--stage", "persisted", stdin=raw)
    assert result.returncode == 0, result.stderr.decode()
    decoded = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert sorted(d["events"][0]["alternate_id"] for d in decoded) == sorted(
        b.events[0].alternate_id for b in sent
    )
    assert {d["events"][0]["measurement"]["values"]["t"] for d in decoded} == {float(i) for i in range(12)}

    raw = await asyncio.to_thread(_kcat, kafka.bootstrap, failed, "-f", "%S:%s")
    result = _fieldgate("cloud", "decode", "--topic", failed, stdin=raw)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["reason"] == "bad json"

    # The wrong stage for the bytes: a clear error, exit status 1, nothing printed as data.
    result = _fieldgate("cloud", "decode", "--stage", "failed-decode", stdin=b"3:\xff\xff\xff")
    assert result.returncode == 1 and b"not a fieldgate.v1.FailedDecode" in result.stderr


@pytest.mark.skipif(PROTOC is None, reason="protoc (Debian package protobuf-compiler) not installed")
async def test_protoc_decodes_a_record_with_the_published_descriptors(
    kafka: KafkaServer, tmp_path: Path
) -> None:
    prefix = f"k{uuid.uuid4().hex[:10]}"
    topic = topic_name("acme", PERSISTED, prefix)
    async with KafkaBus(kafka.bootstrap, prefix=prefix, partitions=1) as bus:
        await bus.publish(topic, [Message(key=b"dev-1", value=_batch("dev-1", 7).SerializeToString())])
    desc = tmp_path / "fieldgate.desc"
    assert _fieldgate("cloud", "descriptors", "-o", str(desc)).returncode == 0
    raw = await asyncio.to_thread(_kcat, kafka.bootstrap, topic, "-c", "1", "-f", "%s")
    assert PROTOC is not None
    decoded = await asyncio.to_thread(
        subprocess.run,
        [PROTOC, f"--descriptor_set_in={desc}", "--decode", "fieldgate.v1.EventBatch"],
        input=raw,
        capture_output=True,
        check=True,
        timeout=30,
    )
    text = decoded.stdout.decode()
    assert 'alternate_id: "dev-1-7"' in text and "value: 7" in text
