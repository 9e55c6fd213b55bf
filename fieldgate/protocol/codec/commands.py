"""Edge → device command payload: what a device receives on
``fieldgate/<tenant>/devices/<device>/commands`` (docs/protocols/mqtt.md)::

    {"invocation": "<id>", "command": "ping", "params": {...}}

The device answers on its events topic with ``{"type": "command_response", "invocation":
"<id>", "response": {...}}``; :mod:`fieldgate.protocol.codec.json_events` decodes that.
"""

from __future__ import annotations

import orjson

from fieldgate.protocol.errors import EncodeError
from fieldgate.v1 import events_pb2 as pb

__all__ = ["encode_command_json"]


def encode_command_json(invocation: pb.CommandInvocation) -> bytes:
    """The JSON command message for one invocation.

    ``params_json`` is already JSON text (the cloud validated it against the device type); it
    is parsed once more here so that a corrupt value fails this one command, with a reason the
    command router reports as FAILED (:class:`~fieldgate.protocol.errors.EncodeError`), instead of reaching the device as broken JSON.
    """
    if not invocation.invocation:
        raise EncodeError("command has no invocation id")
    if not invocation.command:
        raise EncodeError(f"invocation {invocation.invocation}: no command name")
    params: object = {}
    if invocation.params_json:
        try:
            params = orjson.loads(invocation.params_json)
        except orjson.JSONDecodeError as err:
            raise EncodeError(f"invocation {invocation.invocation}: params are not JSON: {err}") from err
        if type(params) is not dict:
            raise EncodeError(f"invocation {invocation.invocation}: params must be a JSON object")
    return orjson.dumps(
        {"invocation": invocation.invocation, "command": invocation.command, "params": params}
    )
