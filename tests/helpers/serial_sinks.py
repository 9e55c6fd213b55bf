"""A recording EventSink for serial adapter tests and the hil suite.

It is the agent's side of the adapter contract without the agent: ``accept`` stores the events
(optionally slowly, to exercise backpressure), ``reject`` stores failed decodes. Tests that
need the real thing run the adapter inside an EdgeAgent instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from fieldgate.v1 import events_pb2 as pb


class RecordingSink:
    def __init__(self, *, accept_delay_s: float = 0.0) -> None:
        self.events: list[pb.Event] = []
        self.rejected: list[tuple[str, str, bytes]] = []  # (source, reason, payload)
        self.online: list[tuple[str, str]] = []
        self.accept_delay_s = accept_delay_s
        self.accept_calls = 0

    async def accept(self, events: Sequence[pb.Event], *, source: str) -> None:
        self.accept_calls += 1
        if self.accept_delay_s:
            await asyncio.sleep(self.accept_delay_s)
        self.events.extend(events)

    async def reject(self, payload: bytes, *, source: str, reason: str, tenant: str = "") -> None:
        self.rejected.append((source, reason, payload))

    async def on_online(self, tenant: str, device: str) -> None:
        self.online.append((tenant, device))

    # ------------------------------------------------------------------ views

    def measurements(self, device: str | None = None) -> list[dict[str, float]]:
        return [
            dict(e.measurement.values)
            for e in self.events
            if e.WhichOneof("payload") == "measurement" and (device is None or e.device == device)
        ]

    def seqs(self, device: str | None = None) -> list[int]:
        return [int(v["seq"]) for v in self.measurements(device) if "seq" in v]

    def responses(self) -> dict[str, dict[str, object]]:
        return {
            e.command_response.invocation: json.loads(e.command_response.response_json)
            for e in self.events
            if e.WhichOneof("payload") == "command_response"
        }
