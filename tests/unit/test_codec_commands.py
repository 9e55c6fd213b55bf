"""The command dialog a device sees: the command message down, its command_response up."""

from __future__ import annotations

import orjson

from fieldgate.protocol.codec import DecodeContext
from fieldgate.protocol.codec.commands import encode_command_json
from fieldgate.protocol.codec.json_events import decode_json
from fieldgate.v1 import events_pb2 as pb


def test_a_device_answering_the_command_message_links_back_to_the_invocation() -> None:
    invocation = pb.CommandInvocation(
        invocation="3f6c0a52", command="set-interval", params_json='{"seconds": 30}', expires_ms=1
    )
    message = orjson.loads(encode_command_json(invocation))
    assert message == {"invocation": "3f6c0a52", "command": "set-interval", "params": {"seconds": 30}}

    # What a firmware does with it: act, then answer on its events topic.
    answer = {"type": "command_response", "invocation": message["invocation"], "response": {"interval": 30}}
    (event,) = decode_json(orjson.dumps(answer), DecodeContext("default", "dev-1", 1))
    assert event.command_response.invocation == invocation.invocation
    assert orjson.loads(event.command_response.response_json) == {"interval": 30}


def test_the_command_message_carries_only_what_the_device_needs() -> None:
    invocation = pb.CommandInvocation(invocation="i", command="ping", expires_ms=123, initiator="admin")
    assert set(orjson.loads(encode_command_json(invocation))) == {"invocation", "command", "params"}
