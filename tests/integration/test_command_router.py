"""The command router with a real SQLite file and an in-memory adapter playing the devices."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldgate.edge.commands import CommandRouter
from fieldgate.edge.config import CommandsConfig
from fieldgate.protocol.codec.commands import encode_command_json
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.edge_adapters import LoopbackAdapter
from tests.helpers.waiting import eventually

QUEUED = svc.COMMAND_STATUS_QUEUED
DELIVERED = svc.COMMAND_STATUS_DELIVERED
FAILED = svc.COMMAND_STATUS_FAILED
EXPIRED = svc.COMMAND_STATUS_EXPIRED


class Statuses:
    """Collects what the router reports to the cloud."""

    def __init__(self) -> None:
        self.updates: list[svc.CommandStatusUpdate] = []

    async def __call__(self, update: svc.CommandStatusUpdate) -> None:
        self.updates.append(update)

    def of(self, invocation: str) -> list[int]:
        return [u.status for u in self.updates if u.invocation == invocation]

    def reason(self, invocation: str) -> str:
        return [u.reason for u in self.updates if u.invocation == invocation][-1]


def command(inv: str, device: str = "dev-1", ttl_ms: int | None = None) -> svc.CommandDown:
    expires = now_ms() + ttl_ms if ttl_ms is not None else 0
    return svc.CommandDown(
        tenant="default",
        device=device,
        invocation=pb.CommandInvocation(invocation=inv, command="ping", params_json="{}", expires_ms=expires),
    )


class Rig:
    def __init__(self, path: Path, config: CommandsConfig) -> None:
        self.path, self.config = path, config
        self.adapter = LoopbackAdapter()
        self.statuses = Statuses()
        self.router = CommandRouter(config, [self.adapter], path, self.statuses)

    async def start(self) -> None:
        await self.router.start()

        class Sink:
            async def accept(self, events: object, *, source: str) -> None:
                raise AssertionError("no events expected")

            async def reject(self, payload: bytes, *, source: str, reason: str, tenant: str = "") -> None:
                raise AssertionError("no rejects expected")

        await self.adapter.start(Sink(), self.router.on_online)

    async def stop(self) -> None:
        await self.adapter.stop()
        await self.router.stop()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path / "commands.db", CommandsConfig(response_timeout_s=0.5, max_pending=5))
    await r.start()
    yield r
    await r.stop()


pytestmark = pytest.mark.integration


async def test_online_device_gets_the_command_and_its_answer_stops_the_timeout(rig: Rig) -> None:
    rig.adapter.online.add(("default", "dev-1"))
    await rig.router.on_command(command("inv-1"))
    await eventually(lambda: rig.statuses.of("inv-1") == [QUEUED, DELIVERED], 10)
    [(tenant, device, invocation)] = rig.adapter.delivered
    assert (tenant, device, invocation.invocation, invocation.command) == (
        "default",
        "dev-1",
        "inv-1",
        "ping",
    )
    await rig.router.on_response("default", "dev-1", "inv-1")
    assert rig.router.pending == 0
    # Well past the response timeout: nothing more is reported.
    await rig.router.on_command(command("inv-2"))
    await eventually(lambda: FAILED in rig.statuses.of("inv-2"), 10)
    assert rig.statuses.of("inv-1") == [QUEUED, DELIVERED]


async def test_another_devices_answer_does_not_stop_the_timeout(rig: Rig) -> None:
    """Only the device the command was for answers it: another device's command_response (or
    a same-named device of another tenant) is counted and changes nothing."""
    rig.adapter.online.add(("default", "dev-1"))
    await rig.router.on_command(command("inv-1"))
    await eventually(lambda: rig.statuses.of("inv-1") == [QUEUED, DELIVERED], 10)
    await rig.router.on_response("default", "dev-2", "inv-1")
    await rig.router.on_response("other", "dev-1", "inv-1")
    assert rig.router.stats["responses_refused"] == 2
    assert rig.router.stats["answered"] == 0
    assert rig.router.pending == 1
    await eventually(lambda: rig.statuses.of("inv-1") == [QUEUED, DELIVERED, FAILED], 10)
    assert rig.statuses.reason("inv-1") == "timeout"


async def test_offline_device_gets_the_command_when_it_comes_online(rig: Rig) -> None:
    await rig.router.on_command(command("inv-1"))
    assert rig.statuses.of("inv-1") == [QUEUED]
    assert rig.router.pending == 1
    await rig.adapter.set_online("default", "dev-1")
    await eventually(lambda: rig.statuses.of("inv-1") == [QUEUED, DELIVERED], 10)
    assert [inv.invocation for _, _, inv in rig.adapter.delivered] == ["inv-1"]


async def test_commands_for_an_offline_device_expire_with_their_ttl(rig: Rig) -> None:
    await rig.router.on_command(command("inv-1", ttl_ms=300))
    await eventually(lambda: rig.statuses.of("inv-1") == [QUEUED, EXPIRED], 10)
    await rig.adapter.set_online("default", "dev-1")
    assert rig.adapter.delivered == []
    assert rig.router.pending == 0
    # Already expired on arrival: reported at once, never delivered.
    await rig.router.on_command(command("inv-2", ttl_ms=-1))
    assert rig.statuses.of("inv-2") == [EXPIRED]
    assert rig.adapter.delivered == []


async def test_unanswered_command_fails_with_timeout(rig: Rig) -> None:
    rig.adapter.online.add(("default", "dev-1"))
    await rig.router.on_command(command("inv-1"))
    await eventually(lambda: rig.statuses.of("inv-1") == [QUEUED, DELIVERED, FAILED], 10)
    assert rig.statuses.reason("inv-1") == "timeout"
    assert rig.router.pending == 0


async def test_delivery_error_fails_the_command_with_its_reason(rig: Rig) -> None:
    rig.adapter.online.add(("default", "dev-1"))
    rig.adapter.fail_with = "publish refused by broker"
    await rig.router.on_command(command("inv-1"))
    await eventually(lambda: rig.statuses.of("inv-1") == [QUEUED, FAILED], 10)
    assert rig.statuses.reason("inv-1") == "publish refused by broker"


async def test_queue_bound_fails_extra_commands(rig: Rig) -> None:
    for i in range(5):
        await rig.router.on_command(command(f"inv-{i}", device=f"dev-{i}"))
    await rig.router.on_command(command("inv-5"))
    assert rig.statuses.of("inv-5") == [FAILED]
    assert rig.statuses.reason("inv-5") == "edge queue full"
    assert rig.router.pending == 5


async def test_resent_command_is_not_delivered_twice(rig: Rig) -> None:
    rig.adapter.online.add(("default", "dev-1"))
    await rig.router.on_command(command("inv-1"))
    await eventually(lambda: DELIVERED in rig.statuses.of("inv-1"), 10)
    await rig.router.on_command(command("inv-1"))
    assert len(rig.adapter.delivered) == 1
    # The re-send is answered with the current status, so the cloud can catch up.
    assert rig.statuses.of("inv-1")[-1] == DELIVERED


async def test_pending_commands_survive_a_restart(tmp_path: Path) -> None:
    config = CommandsConfig(response_timeout_s=0.5)
    first = Rig(tmp_path / "commands.db", config)
    await first.start()
    await first.router.on_command(command("inv-1"))
    await first.router.on_command(command("inv-2", ttl_ms=600_000))
    assert first.statuses.of("inv-1") == [QUEUED]
    await first.stop()

    second = Rig(tmp_path / "commands.db", config)
    await second.start()
    try:
        assert second.router.pending == 2
        # The statuses the cloud may not have seen are still in the outbox.
        unconfirmed = await second.router.unconfirmed_statuses()
        assert {(u.invocation, u.status) for u in unconfirmed} == {("inv-1", QUEUED), ("inv-2", QUEUED)}
        await second.adapter.set_online("default", "dev-1")
        await eventually(lambda: len(second.adapter.delivered) == 2, 10)
        assert [inv.invocation for _, _, inv in second.adapter.delivered] == ["inv-1", "inv-2"]
        await second.router.on_response("default", "dev-1", "inv-1")
        await second.router.on_response("default", "dev-1", "inv-2")
        await second.router.confirm_statuses([("inv-1", DELIVERED), ("inv-2", DELIVERED)])
        assert await second.router.unconfirmed_statuses() == []
        # A re-send after the restart is still recognised.
        await second.router.on_command(command("inv-1"))
        assert len(second.adapter.delivered) == 2
    finally:
        await second.stop()


async def test_delivered_command_awaiting_its_answer_times_out_after_a_restart(tmp_path: Path) -> None:
    config = CommandsConfig(response_timeout_s=0.5)
    first = Rig(tmp_path / "commands.db", config)
    await first.start()
    first.adapter.online.add(("default", "dev-1"))
    await first.router.on_command(command("inv-1"))
    await eventually(lambda: first.statuses.of("inv-1") == [QUEUED, DELIVERED], 10)
    await first.stop()

    second = Rig(tmp_path / "commands.db", config)
    await second.start()
    try:
        await eventually(lambda: second.statuses.of("inv-1") == [FAILED], 10)
        assert second.statuses.reason("inv-1") == "timeout"
        assert second.adapter.delivered == []  # not delivered twice
    finally:
        await second.stop()


class EncodingAdapter(LoopbackAdapter):
    """Encodes each command the way the MQTT and BLE adapters do before handing it over."""

    async def send_command(self, tenant: str, device: str, invocation: pb.CommandInvocation) -> None:
        encode_command_json(invocation)
        await super().send_command(tenant, device, invocation)


async def test_a_command_that_cannot_be_encoded_fails_with_its_reason(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "commands.db", CommandsConfig(response_timeout_s=0.5, max_pending=5))
    rig.adapter = EncodingAdapter()
    rig.router = CommandRouter(rig.config, [rig.adapter], rig.path, rig.statuses)
    await rig.start()
    try:
        rig.adapter.online.add(("default", "dev-1"))
        bad = command("inv-1")
        bad.invocation.params_json = "[30]"
        await rig.router.on_command(bad)
        await eventually(lambda: rig.statuses.of("inv-1") == [QUEUED, FAILED], 10)
        assert rig.statuses.reason("inv-1") == "invocation inv-1: params must be a JSON object"
        assert rig.adapter.delivered == []
        assert rig.router.pending == 0
    finally:
        await rig.stop()
