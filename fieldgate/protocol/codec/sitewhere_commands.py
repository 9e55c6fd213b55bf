"""Edge → SiteWhere device: commands as SiteWhere's JSON command encoding, for firmware that
subscribes to ``SiteWhere/<tenant>/command/<device>``. Pure functions, no I/O.

SiteWhere's ``JsonCommandExecutionEncoder`` (sitewhere/sitewhere,
``service-command-delivery/src/main/java/com/sitewhere/commands/encoding/json/
JsonCommandExecutionEncoder.java``) marshals an ``EncodedCommandExecution``
(``.../commands/encoding/EncodedCommandExecution.java``, Jackson ``NON_NULL``): ``command``
(a ``DeviceCommandExecution``: the ``command`` definition, the ``invocation`` event and the
typed ``parameters``, sitewhere-java-api ``rest/model/device/command/
DeviceCommandExecution.java``), ``nestingContext`` and the device's ``assignments``.

fieldgate fills what it knows at the edge: the command's ``name``; the invocation's ``id``
(SiteWhere's originating event id — the device's acknowledgement names it as ``originator`` /
``originatingEventId``), ``eventType`` ``CommandInvocation``, ``initiator`` ``REST``,
``target`` ``Assignment`` and ``parameterValues`` (SiteWhere keeps them as text); the typed
``parameters``; and the nesting context's ``gateway`` token (the device itself: fieldgate has
no nested devices). Objects SiteWhere took from its device management (the full device type,
device and assignment records) are left out, as Jackson leaves out what is null.
"""

from __future__ import annotations

from typing import Any

import orjson

from fieldgate.protocol.errors import EncodeError
from fieldgate.v1 import events_pb2 as pb

__all__ = ["encode_sitewhere_command_json"]


def _params(invocation: pb.CommandInvocation) -> dict[str, Any]:
    if not invocation.params_json:
        return {}
    try:
        params = orjson.loads(invocation.params_json)
    except orjson.JSONDecodeError as err:
        raise EncodeError(f"invocation {invocation.invocation}: params are not JSON: {err}") from err
    if type(params) is not dict:
        raise EncodeError(f"invocation {invocation.invocation}: params must be a JSON object")
    return params


def _text(value: object) -> str:
    """A parameter value as SiteWhere stores it in ``parameterValues`` (Java ``String.valueOf``)."""
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if type(value) is int or type(value) is float:
        return repr(value)
    return orjson.dumps(value).decode()


def encode_sitewhere_command_json(device: str, invocation: pb.CommandInvocation) -> bytes:
    """SiteWhere's JSON command execution for one invocation sent to ``device``."""
    if not invocation.invocation:
        raise EncodeError("command has no invocation id")
    if not invocation.command:
        raise EncodeError(f"invocation {invocation.invocation}: no command name")
    params = _params(invocation)
    execution = {
        "command": {
            "command": {"name": invocation.command},
            "invocation": {
                "id": invocation.invocation,
                "eventType": "CommandInvocation",
                "initiator": "REST",
                "target": "Assignment",
                "parameterValues": {name: _text(value) for name, value in params.items()},
            },
            "parameters": params,
        },
        "nestingContext": {"gateway": {"token": device}},
    }
    return orjson.dumps(execution)
