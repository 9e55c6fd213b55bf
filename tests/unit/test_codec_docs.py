"""docs/protocols/mqtt.md stays true: every payload it shows decodes as it says.

Firmware authors copy these examples; a codec change that breaks one must fail here, not on
their bench.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import orjson
import pytest

from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.protocol.codec.commands import encode_command_json
from fieldgate.protocol.codec.formats import decoder_for
from fieldgate.protocol.codec.json_events import decode_json
from fieldgate.protocol.topics import LINK_CONNECTED, LINK_DISCONNECTED, parse_inbound, parse_link_topic
from fieldgate.v1 import events_pb2 as pb

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocols" / "mqtt.md").read_text(encoding="utf-8")
CTX = DecodeContext("default", "thermo-1", 1_700_000_000_000)


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.DOTALL)


def _publishes() -> list[tuple[str, bytes]]:
    """(topic, payload) of every ``mosquitto_pub ... -m '...'`` in the document."""
    found = []
    for block in _blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            if not command.lstrip().startswith("mosquitto_pub") or " -m " not in command:
                continue
            args = shlex.split(command)
            found.append((args[args.index("-t") + 1], args[args.index("-m") + 1].encode()))
    return found


def _reason_rows() -> list[tuple[str, str]]:
    rows = re.findall(r"^\| `(.+?)` \| `(.+?)` \|$", DOC, flags=re.MULTILINE)
    return [(payload, reason) for payload, reason in rows if payload.startswith(("{", "["))]


def test_the_document_has_examples() -> None:
    assert len(_publishes()) >= 8
    assert len(_reason_rows()) >= 8


@pytest.mark.parametrize(("topic", "payload"), _publishes())
def test_every_mosquitto_pub_example_decodes(topic: str, payload: bytes) -> None:
    if parse_link_topic(topic) is not None:  # a link report: its exact text
        assert payload.decode() in (LINK_CONNECTED, LINK_DISCONNECTED), payload
        return
    inbound = parse_inbound(topic)
    assert inbound is not None, topic
    ctx = DecodeContext(inbound.tenant, inbound.device, CTX.received_ms)
    assert decoder_for(inbound.codec)(payload, ctx)


@pytest.mark.parametrize("block", _blocks("json"))
def test_every_json_example_is_a_valid_event_or_the_command_message(block: str) -> None:
    doc = orjson.loads(block)
    if isinstance(doc, dict) and "command" in doc:
        invocation = pb.CommandInvocation(
            invocation=doc["invocation"],
            command=doc["command"],
            params_json=orjson.dumps(doc["params"]).decode(),
        )
        assert orjson.loads(encode_command_json(invocation)) == doc
    else:
        assert decode_json(block.encode(), CTX)


@pytest.mark.parametrize(("payload", "reason"), _reason_rows())
def test_the_documented_reasons_are_the_real_ones(payload: str, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_json(payload.encode(), CTX)
    assert caught.value.reason == reason
