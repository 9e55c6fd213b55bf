"""``fieldgate mqtt mosquitto-files`` against a real Mosquitto: its password file and ACL file.

The credentials file is made with ``fieldgate mqtt credentials add``; Mosquitto is started from
fieldgate's shipped configuration with the written ``password_file`` and ``acl_file`` and
anonymous clients off. A client logging in as the edge agent watches what gets through.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from fieldgate.cli import main
from fieldgate.protocol import topics
from tests.helpers.mosquitto import Mosquitto, start_mosquitto
from tests.helpers.waiting import eventually, never
from tests.integration.test_mqtt_auth import Client

pytestmark = pytest.mark.integration

AGENT_PASSWORD = "password-of-the-edge-agent"
PASSWORDS = {"dev-a": "password-of-dev-a", "dev-b": "password-of-dev-b"}


def cli(monkeypatch: pytest.MonkeyPatch, args: list[str], stdin: str = "") -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(args) == 0


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Mosquitto:
    creds = str(tmp_path / "creds.yaml")
    for device, password in PASSWORDS.items():
        cli(
            monkeypatch,
            [
                "mqtt",
                "credentials",
                "add",
                "--file",
                creds,
                "--tenant",
                "default",
                "--device",
                device,
                "--password-stdin",
            ],
            password + "\n",
        )
    out = tmp_path / "mosquitto-files"
    cli(
        monkeypatch,
        ["mqtt", "mosquitto-files", "--credentials", creds, "--out-dir", str(out), "--agent-password-stdin"],
        AGENT_PASSWORD + "\n",
    )
    assert (out / "passwd").stat().st_mode & 0o777 == 0o600
    overrides = {
        "allow_anonymous": "false",
        "password_file": str(out / "passwd"),
        "acl_file": str(out / "acl"),
    }
    return start_mosquitto(tmp_path, overrides=overrides)


async def login(broker: Mosquitto, username: str | None, password: str | None) -> Client:
    client = Client(broker.port, username, password)
    reason = await client.login()
    assert not reason.is_failure, f"{username}: {reason}"
    return client


async def test_mosquitto_accepts_the_written_files(broker: Mosquitto) -> None:
    try:
        for username, password in [("dev-a", "wrong-password"), ("nobody", "x"), (None, None)]:
            refused = Client(broker.port, username, password)
            reason = await refused.login()
            await refused.close()
            assert reason.is_failure, (username, reason)

        agent = await login(broker, "fieldgate-edge", AGENT_PASSWORD)
        a = await login(broker, "dev-a", PASSWORDS["dev-a"])
        b = await login(broker, "dev-b", PASSWORDS["dev-b"])
        try:
            await agent.subscribe(topics.EVENTS_FILTER)
            await b.subscribe(topics.commands_topic("default", "dev-b"))
            # Mosquitto (3.1.1) grants these subscriptions and filters each delivery by the ACL.
            await a.subscribe_code(topics.commands_topic("default", "dev-b"))
            await a.subscribe_code("fieldgate/#")

            # Forgeries from separate connections: Mosquitto drops a denied publish (2.0.11 also
            # closes the connection of a QoS 1 forger), so they never reach the agent.
            for topic in (topics.events_topic("default", "dev-b"), topics.commands_topic("default", "dev-b")):
                forger = await login(broker, "dev-a", PASSWORDS["dev-a"])
                info = forger.publish(
                    topic, {"type": "alert", "alert_type": "forged", "invocation": "i-forged"}
                )
                # The broker has dealt with it: acknowledged (and dropped) it, or closed the connection.
                await eventually(
                    lambda i=info, f=forger: i.is_published() or not f.client.is_connected(),
                    10,
                    "the broker's answer to the forged publish",
                )
                await forger.close()

            await a.publish_acked(
                topics.events_topic("default", "dev-a"), {"type": "alert", "alert_type": "own"}
            )
            topic, payload = await agent.next_message()
            assert topic == topics.events_topic("default", "dev-a")
            assert json.loads(payload)["alert_type"] == "own"

            agent.publish(topics.commands_topic("default", "dev-b"), {"invocation": "i-1", "command": "ping"})
            topic, payload = await b.next_message()
            assert json.loads(payload)["invocation"] == "i-1"
            await b.publish_acked(
                topics.events_topic("default", "dev-b"), {"type": "alert", "alert_type": "b"}
            )
            topic, _ = await agent.next_message()
            assert topic == topics.events_topic("default", "dev-b")
            # agent: a forged event reached it; dev-a: it read dev-b's commands or others' events;
            # dev-b: it received a command written by dev-a.
            clients = {"agent": agent, "dev-a": a, "dev-b": b}
            await never(
                lambda: [name for name, c in clients.items() if not c.messages.empty()],
                within=0.5,
                what="a message the ACL should have stopped",
            )
        finally:
            for client in (agent, a, b):
                await client.close()
    finally:
        broker.stop()
