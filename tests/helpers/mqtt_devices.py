"""paho-mqtt device clients for async tests.

paho runs its own network thread (``loop_start``); every call that waits for the broker goes
through ``asyncio.to_thread`` so the test's event loop — which may be running the broker under
test — keeps serving while the test waits.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

Payload = bytes | str | dict[str, Any] | list[Any]


class Device:
    """One MQTT client: publish, subscribe, collect what arrives."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        max_inflight: int = 100,
        keepalive: int = 30,
        will: tuple[str, str] | None = None,
    ) -> None:
        """``will``: (topic, payload) the broker publishes (QoS 1, retained) when this client
        vanishes without DISCONNECT."""
        self.host, self.port = host, port
        self.keepalive = keepalive
        self.client_id = client_id or f"test-dev-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=clean_session
        )
        self.client.max_inflight_messages_set(max_inflight)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=100_000)
        self._connected = threading.Event()
        self._subacks: dict[int, threading.Event] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.put_nowait((m.topic, bytes(m.payload)))
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            self._connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._subacks.setdefault(mid, threading.Event()).set()

    async def connect(self, wait_s: float = 10.0) -> Device:
        def run() -> None:
            self.client.connect(self.host, self.port, keepalive=self.keepalive)
            self.client.loop_start()
            if not self._connected.wait(wait_s):
                raise TimeoutError(f"{self.client_id}: no CONNACK from {self.host}:{self.port}")

        await asyncio.to_thread(run)
        return self

    async def subscribe(self, topic: str, qos: int = 1, wait_s: float = 10.0) -> None:
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        event = self._subacks.setdefault(mid, threading.Event())
        if not await asyncio.to_thread(event.wait, wait_s):
            raise TimeoutError(f"{self.client_id}: no SUBACK for {topic}")

    async def unsubscribe(self, topic: str) -> None:
        self.client.unsubscribe(topic)

    def publish(self, topic: str, payload: Payload, qos: int = 1) -> mqtt.MQTTMessageInfo:
        if isinstance(payload, dict | list):
            payload = json.dumps(payload)
        return self.client.publish(topic, payload, qos=qos)

    async def publish_acked(self, topic: str, payload: Payload, wait_s: float = 10.0) -> None:
        info = self.publish(topic, payload, qos=1)
        await asyncio.to_thread(info.wait_for_publish, wait_s)
        if not info.is_published():
            raise TimeoutError(f"{self.client_id}: no PUBACK for a message on {topic}")

    async def next_message(self, wait_s: float = 10.0) -> tuple[str, bytes]:
        return await asyncio.to_thread(self.messages.get, True, wait_s)

    async def close(self) -> None:
        def run() -> None:
            self.client.disconnect()
            self.client.loop_stop()

        await asyncio.to_thread(run)

    async def go_silent(self) -> None:
        """Stop sending anything, keepalive pings included, with the connection left open (as
        a device whose network vanished: no FIN ever reaches the broker). ``drop`` closes it."""
        await asyncio.to_thread(self.client.loop_stop)

    async def drop(self) -> None:
        """Vanish without DISCONNECT (as a device losing power would)."""

        def run() -> None:
            self.client.loop_stop()
            sock = self.client.socket()
            if sock is not None:
                sock.close()

        await asyncio.to_thread(run)


def measurement(value: float, ident: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "measurement", "values": {"n": value}, **extra}
    if ident is not None:
        body["id"] = ident
    return body
