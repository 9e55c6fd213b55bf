"""Kafka sink: produce each event's JSON document to a topic of a (possibly other) Kafka
cluster, keyed by device token (a device's events stay in order on one partition).

The producer is idempotent with ``acks=all``; a delivery is done when every message's delivery
report came back without error. A dedicated thread polls the producer for reports and
resolves the asyncio futures with ``call_soon_threadsafe``, like the Kafka bus does.
``message.timeout.ms`` is the connector's ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from fieldgate.cloud.connectors.events import encode_document, event_document
from fieldgate.cloud.connectors.models import DeliverySpec, KafkaSpec
from fieldgate.cloud.connectors.sink import DeliveryError
from fieldgate.v1 import events_pb2 as pb

# Errors that cannot heal by retrying the same message.
_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.INVALID_RECORD,
    }
)


class KafkaSink:
    def __init__(self, tenant: str, connector: str, spec: KafkaSpec, delivery: DeliverySpec) -> None:
        self._connector = connector
        self._spec = spec
        self._timeout = delivery.timeout_s
        self._config: dict[str, Any] = {
            **spec.config,
            "bootstrap.servers": spec.bootstrap,
            "client.id": f"fieldgate-connector-{tenant}-{connector}",
            "acks": "all",
            "enable.idempotence": True,
            "message.timeout.ms": int(delivery.timeout_s * 1000),
            "linger.ms": 5,
        }
        if spec.sasl_password is not None:
            self._config["sasl.password"] = spec.sasl_password.get_secret_value()
        self._producer: Producer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        self._loop = asyncio.get_running_loop()
        try:
            producer = Producer(self._config)
        except KafkaException as err:
            raise DeliveryError(f"kafka producer: {err}", permanent=True) from err
        self._producer = producer
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._poll, args=(producer,), name=f"connector-{self._connector}", daemon=True
        )
        self._thread.start()

    def _poll(self, producer: Producer) -> None:
        while not self._stopping.is_set():
            producer.poll(0.1)
        producer.flush(5)
        producer.purge()
        producer.poll(0)

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        self._stopping.set()
        if thread is not None:
            await asyncio.to_thread(thread.join)
        self._producer = None

    async def send(self, events: Sequence[pb.Event], *, attempt: int) -> None:
        await self.start()
        producer, loop = self._producer, self._loop
        assert producer is not None and loop is not None
        futures: list[asyncio.Future[None]] = []
        for ev in events:
            fut: asyncio.Future[None] = loop.create_future()

            def report(err: KafkaError | None, _msg: Any, fut: asyncio.Future[None] = fut) -> None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, fut, err)

            try:
                producer.produce(
                    self._spec.topic,
                    key=ev.device.encode(),
                    value=encode_document(event_document(ev)),
                    on_delivery=report,
                )
            except BufferError as err:
                raise DeliveryError("kafka producer queue is full") from err
            except KafkaException as err:
                raise DeliveryError(f"kafka produce: {err}", permanent=_permanent(err.args[0])) from err
            futures.append(fut)
        try:
            async with asyncio.timeout(self._timeout + 5):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError as err:
            raise DeliveryError(f"no delivery report within {self._timeout + 5}s") from err
        for res in results:
            if isinstance(res, BaseException):
                raise res


def _permanent(err: object) -> bool:
    return isinstance(err, KafkaError) and err.code() in _PERMANENT


def _settle(fut: asyncio.Future[None], err: KafkaError | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(DeliveryError(f"kafka: {err.name()}: {err.str()}", permanent=_permanent(err)))
