"""A paho-mqtt QoS 1 publisher for tests that must know exactly which messages the broker
acknowledged (PUBACK), with a bounded in-flight window (paho stalls past 65,535)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.waiting import eventually_sync


@dataclass
class AckedPublisher:
    host: str
    port: int
    client_id: str = field(default_factory=lambda: f"test-pub-{uuid.uuid4().hex[:8]}")
    max_inflight: int = 200
    acked: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._mid_to_id: dict[int, str] = {}
        self._early_acks: set[int] = set()
        self._window = threading.Semaphore(self.max_inflight)
        self._connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        self.client.max_inflight_messages_set(self.max_inflight)
        self.client.on_connect = lambda *a: self._connected.set()
        self.client.on_publish = self._on_publish

    def _on_publish(self, client: object, userdata: object, mid: int, rc: object, props: object) -> None:
        # paho calls this with its own lock held, possibly before publish() has returned the
        # mid: never wait on anything here that publish() holds.
        with self._lock:
            ident = self._mid_to_id.pop(mid, None)
            if ident is None:
                self._early_acks.add(mid)
                return
            self.acked.append(ident)
        self._window.release()

    def connect(self, timeout: float = 10.0) -> None:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise TimeoutError(f"no CONNACK from {self.host}:{self.port}")

    def publish(self, topic: str, payload: dict[str, object] | list[dict[str, object]], ident: str) -> bool:
        """Publish QoS 1; returns False if the window did not free up within 5 s."""
        if not self._window.acquire(timeout=5):
            return False
        info = self.client.publish(topic, json.dumps(payload), qos=1)
        early = False
        with self._lock:
            self.sent.append(ident)
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
                self.acked.append(ident)
                early = True
            else:
                self._mid_to_id[info.mid] = ident
        if early:
            self._window.release()
        return True

    def publish_measurements(
        self,
        tenant: str,
        device: str,
        count: int,
        *,
        prefix: str = "m",
        rate_hz: float | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        topic = f"fieldgate/{tenant}/devices/{device}/events"
        for i in range(count):
            if stop is not None and stop.is_set():
                return
            ident = f"{prefix}-{i}"
            self.publish(topic, {"type": "measurement", "values": {"n": i}, "id": ident}, ident)
            if rate_hz:
                # Pacing, not a wait: the load arrives at rate_hz while the test does its part.
                time.sleep(1.0 / rate_hz)

    def wait_all_acked(self, timeout: float = 30.0) -> bool:
        """Whether every publish got its PUBACK within ``timeout`` (blocks: call it in a thread)."""

        def none_pending() -> bool:
            with self._lock:
                return not self._mid_to_id

        try:
            eventually_sync(none_pending, timeout, "a PUBACK for every publish")
        except AssertionError:
            return False
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
