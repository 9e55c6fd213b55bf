"""The simulated device itself: sensors, payloads and command handling. Pure, no I/O.

Kept apart from the MQTT transport (:mod:`fieldgate.sims.mqtt`) so that a serial or BLE
simulator can reuse the same device behaviour, and so the payloads can be checked without a
broker. The payload shapes are the device-side contract of docs/protocols/mqtt.md:

- measurement ``{"type":"measurement","values":{...},"ts":<epoch ms>,"id":"<alternate id>",
  "metadata":{"unit.<name>":"<unit>",...}}``, one object per message or several in a JSON array;
- SiteWhere's ``{"deviceToken":..,"type":"DeviceMeasurement","request":{"name","value","eventDate",
  "metadata":{"unit.<name>":..}}}``;
- commands arrive as ``{"invocation":"<id>","command":"ping","params":{...}}`` and are answered
  with ``{"type":"command_response","invocation":"<id>","response":{...}}``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from fieldgate.sims.errors import CommandError

# Readings stay inside what a real indoor sensor reports; the walk reflects at the bounds.
TEMPERATURE_RANGE = (-20.0, 60.0)
HUMIDITY_RANGE = (0.0, 100.0)
TEMPERATURE_STEP = 0.05  # standard deviation per reading, °C
HUMIDITY_STEP = 0.2  # standard deviation per reading, %RH
# The unit of each reading, sent as event metadata ``unit.<name>`` (docs/protocols/mqtt.md).
UNITS = {"temperature": "°C", "humidity": "%"}

# The names the simulated firmware knows; anything else is answered with an error response.
COMMANDS = ("ping", "set-interval")
UNKNOWN_COMMAND = "unknown command"


def device_tokens(count: int, prefix: str = "sim") -> list[str]:
    """``sim-0001``, ``sim-0002``, ...: stable names so reruns hit the same registered devices."""
    if count < 1:
        raise ValueError("at least one device")
    width = max(4, len(str(count)))
    return [f"{prefix}-{i:0{width}d}" for i in range(1, count + 1)]


def _walk(value: float, step: float, low: float, high: float, rng: random.Random) -> float:
    value += rng.gauss(0.0, step)
    if value < low:
        value = 2 * low - value
    elif value > high:
        value = 2 * high - value
    return min(max(value, low), high)


@dataclass(slots=True)
class Sensors:
    """A temperature/humidity sensor pair doing a bounded random walk (plausible, not flat)."""

    temperature: float
    humidity: float

    @classmethod
    def initial(cls, rng: random.Random) -> Sensors:
        """A plausible indoor starting point, different per device."""
        return cls(temperature=rng.uniform(18.0, 24.0), humidity=rng.uniform(35.0, 55.0))

    def read(self, rng: random.Random) -> dict[str, float]:
        """Advance the walk one step and return the reading, rounded like real firmware does."""
        self.temperature = _walk(self.temperature, TEMPERATURE_STEP, *TEMPERATURE_RANGE, rng)
        self.humidity = _walk(self.humidity, HUMIDITY_STEP, *HUMIDITY_RANGE, rng)
        return {"temperature": round(self.temperature, 2), "humidity": round(self.humidity, 1)}


def unit_metadata(names: Sequence[str]) -> dict[str, str]:
    """``{"unit.<name>": unit}`` for the names that have a unit (:data:`UNITS`)."""
    return {f"unit.{n}": UNITS[n] for n in names if n in UNITS}


def measurement(values: dict[str, float], ts_ms: int, event_id: str | None = None) -> dict[str, Any]:
    """One measurement event object of the JSON contract, with the units of its values."""
    event: dict[str, Any] = {"type": "measurement", "values": values, "ts": ts_ms}
    if event_id is not None:
        event["id"] = event_id
    units = unit_metadata(list(values))
    if units:
        event["metadata"] = units
    return event


def encode_events(events: Sequence[dict[str, Any]]) -> bytes:
    """A single event as an object, several as an array: both forms are part of the contract."""
    if not events:
        raise ValueError("no events to encode")
    return orjson.dumps(events[0] if len(events) == 1 else list(events))


def encode_sitewhere_measurement(
    device: str, name: str, value: float, ts_ms: int, alternate_id: str | None = None
) -> bytes:
    """SiteWhere's DeviceMeasurement message (``SiteWhere/<tenant>/input/json``)."""
    request: dict[str, Any] = {"name": name, "value": value, "eventDate": ts_ms}
    if alternate_id is not None:
        request["alternateId"] = alternate_id
    units = unit_metadata([name])
    if units:
        request["metadata"] = units
    return orjson.dumps({"deviceToken": device, "type": "DeviceMeasurement", "request": request})


@dataclass(frozen=True, slots=True)
class CommandReply:
    """What the firmware answers to one command, and the send interval it adopts, if any."""

    invocation: str
    command: str
    response: dict[str, Any]
    interval_s: int | None = None


def handle_command(payload: bytes | bytearray) -> CommandReply:
    """The simulated firmware's command handler.

    ``ping`` → ``{"pong": true}``; ``set-interval {"seconds": n}`` → ``{"interval_s": n}`` and
    the device sends every n seconds from now on; anything else → ``{"error": ...}``. Raises
    :class:`CommandError` only when there is no invocation id to answer to.
    """
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise CommandError(f"command is not JSON: {err}") from err
    if not isinstance(message, dict):
        raise CommandError("command is not a JSON object")
    invocation = message.get("invocation")
    if not isinstance(invocation, str) or not invocation:
        raise CommandError("command has no invocation id")
    command = message.get("command")
    params = message.get("params") or {}
    if not isinstance(command, str) or not isinstance(params, dict):
        return CommandReply(invocation, str(command), {"error": "malformed command"})
    if command == "ping":
        return CommandReply(invocation, command, {"pong": True})
    if command == "set-interval":
        seconds = params.get("seconds")
        if isinstance(seconds, float) and seconds.is_integer():
            seconds = int(seconds)  # JSON writers that only have doubles
        if type(seconds) is not int or seconds < 1:
            return CommandReply(invocation, command, {"error": "seconds must be a positive integer"})
        return CommandReply(invocation, command, {"interval_s": seconds}, interval_s=seconds)
    return CommandReply(invocation, command, {"error": UNKNOWN_COMMAND})


def encode_command_response(reply: CommandReply, ts_ms: int) -> bytes:
    """The command_response event a device publishes on its events topic."""
    return orjson.dumps(
        {"type": "command_response", "invocation": reply.invocation, "response": reply.response, "ts": ts_ms}
    )


def interval_for_rate(rate_hz: float) -> float:
    """Seconds between messages; a rate of 0 means "as fast as the in-flight window allows"."""
    if not math.isfinite(rate_hz) or rate_hz < 0:
        raise ValueError("rate must be a finite number >= 0")
    return 0.0 if rate_hz == 0 else 1.0 / rate_hz
