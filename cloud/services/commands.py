"""The command invocation service: the one place where a command enters the cloud.

REST and gRPC both call :meth:`CommandService.invoke`. It checks the request against the
device type's command definition (so a typo or a wrong parameter type is refused here, with a
message that names the parameter, instead of reaching the hardware), records the invocation as
QUEUED in the invocation store and publishes the command_invocation event to the tenant's
``[command-invocations]`` topic. Delivery, status updates and expiry belong to the pipeline
(``fieldgate.cloud.pipeline.delivery``); this module never talks to an edge.

The invocation is stored before it is published: a crash between the two leaves a QUEUED
invocation that expires at its time-to-live, never a command on the bus that nobody can look up.

A device answers only its own commands: that rule (:func:`~fieldgate.cloud.domain.commands.response_refusal`)
is shared with the pipeline stages that see command responses, so it lives in the domain.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

from fieldgate.cloud.bus import COMMAND_INVOCATIONS, Bus, Message, topic_name
from fieldgate.cloud.domain.commands import MAX_TTL_S
from fieldgate.cloud.errors import BusError, InvalidRequest, NotFound, UnknownReference
from fieldgate.cloud.store.invocations import InvocationStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

PARAM_TYPE_NAMES: dict[int, str] = {
    model.PARAM_TYPE_STRING: "string",
    model.PARAM_TYPE_INT: "int",
    model.PARAM_TYPE_FLOAT: "float",
    model.PARAM_TYPE_BOOL: "bool",
}


def _check_value(name: str, ptype: int, value: object) -> object:
    """The value as it is sent to the device, or InvalidRequest naming the parameter.

    JSON has one number type, so the checks are explicit: a bool is not an int (Python says it
    is), an int is accepted where a float is wanted (and sent as a float, so the device sees
    one type), and NaN/infinity are refused because they are not JSON.
    """
    expected = PARAM_TYPE_NAMES.get(ptype)
    if expected is None:
        raise InvalidRequest(f"parameter '{name}' has no usable type in the device type")
    got = "null" if value is None else type(value).__name__
    if ptype == model.PARAM_TYPE_STRING:
        if isinstance(value, str):
            return value
    elif ptype == model.PARAM_TYPE_BOOL:
        if isinstance(value, bool):
            return value
    elif ptype == model.PARAM_TYPE_INT:
        if isinstance(value, int) and not isinstance(value, bool):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise InvalidRequest(f"parameter '{name}' is out of the 64-bit integer range")
            return value
    elif ptype == model.PARAM_TYPE_FLOAT and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            as_float = float(value)
        except OverflowError:  # an int beyond the float range
            as_float = math.inf
        if not math.isfinite(as_float):
            raise InvalidRequest(f"parameter '{name}' must be a finite number")
        return as_float
    raise InvalidRequest(f"parameter '{name}' must be of type {expected}, got {got}")


def validate_params(
    device_type: str, command: model.DeviceCommand, params: Mapping[str, Any]
) -> dict[str, Any]:
    """Check ``params`` against ``command``'s typed parameters; returns the normalised params."""
    if not isinstance(params, Mapping):
        raise InvalidRequest("params must be a JSON object")
    defined = {p.name: p for p in command.params}
    unknown = sorted(str(k) for k in params if k not in defined)
    if unknown:
        names = ", ".join(f"'{n}'" for n in unknown)
        raise InvalidRequest(
            f"unknown parameter {names} for command '{command.name}' of device type '{device_type}'"
        )
    out: dict[str, Any] = {}
    for name, param in defined.items():
        if name not in params:
            if param.required:
                raise InvalidRequest(f"missing required parameter '{name}' for command '{command.name}'")
            continue
        out[name] = _check_value(name, param.type, params[name])
    return out


def check_ttl(ttl_s: int | None, default_ttl_s: int) -> int:
    ttl = default_ttl_s if ttl_s is None else ttl_s
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_S:
        raise InvalidRequest(f"ttl_s must be between 1 and {MAX_TTL_S} seconds (7 days), got {ttl_s!r}")
    return ttl


class CommandService:
    """Validates, records and publishes command invocations (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        invocations: InvocationStore,
        bus: Bus,
        default_ttl_s: int,
        *,
        topic_prefix: str = "fieldgate",
    ) -> None:
        self._registry = registry
        self._invocations = invocations
        self._bus = bus
        self._default_ttl_s = default_ttl_s
        self._topic_prefix = topic_prefix

    async def invoke(
        self,
        tenant: str,
        device: str,
        command: str,
        params: dict[str, Any],
        ttl_s: int | None,
        initiator: str,
        *,
        invocation_id: str | None = None,
    ) -> svc.InvocationState:
        """Queue ``command`` for ``device``. Raises NotFound (no such device) or InvalidRequest.

        ``invocation_id`` (default: a random one) lets a caller that must not invoke twice
        (batch operations, cloud/services/batch.py) derive the id itself: a second call with the same id
        raises Conflict from the invocation store and publishes nothing."""
        dev = await self._registry.get_device(tenant, device)
        if dev is None:
            raise NotFound(f"device '{device}' does not exist")
        dtype = await self._registry.get_device_type(tenant, dev.device_type)
        if dtype is None:
            raise InvalidRequest(f"device type '{dev.device_type}' of device '{device}' does not exist")
        definition = next((c for c in dtype.commands if c.name == command), None)
        if definition is None:
            raise UnknownReference("command", command, f"device type '{dtype.token}' has no such command")
        clean = validate_params(dtype.token, definition, params)
        ttl = check_ttl(ttl_s, self._default_ttl_s)

        now = now_ms()
        params_json = json.dumps(clean, separators=(",", ":"), allow_nan=False)
        state = svc.InvocationState(
            id=invocation_id or uuid.uuid4().hex,
            tenant=tenant,
            device=device,
            command=command,
            params_json=params_json,
            status=svc.COMMAND_STATUS_QUEUED,
            created_ms=now,
            updated_ms=now,
            expires_ms=now + ttl * 1000,
        )
        stored = await self._invocations.create(state)

        assignment = await self._registry.active_assignment(tenant, device)
        event = pb.Event(
            id=state.id,
            alternate_id=state.id,
            tenant=tenant,
            device=device,
            assignment=assignment.token if assignment is not None else "",
            event_time_ms=now,
            received_time_ms=now,
            command_invocation=pb.CommandInvocation(
                invocation=state.id,
                command=command,
                params_json=params_json,
                expires_ms=state.expires_ms,
                initiator=initiator,
            ),
        )
        try:
            await self._bus.publish(
                topic_name(tenant, COMMAND_INVOCATIONS, self._topic_prefix),
                [Message(key=device.encode(), value=event.SerializeToString())],
            )
        except BusError:
            # Nobody will ever deliver it: say so in its status rather than leave it QUEUED.
            await self._invocations.update_status(
                tenant, state.id, svc.COMMAND_STATUS_FAILED, reason="could not publish to the bus"
            )
            raise
        return stored

    async def get(self, tenant: str, invocation_id: str) -> svc.InvocationState:
        """The invocation's current state. Raises NotFound (also for another tenant's id)."""
        state = await self._invocations.get(tenant, invocation_id)
        if state is None:
            raise NotFound(f"invocation '{invocation_id}' does not exist")
        return state
