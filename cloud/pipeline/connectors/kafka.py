"""Kafka sink: produce each event's JSON document to a topic of a (possibly other) Kafka
cluster, keyed by device token (a device's events stay in order on one partition).

The producer is idempotent with ``acks=all``; a delivery is done when every message's delivery
report came back without error. A dedicated thread polls the producer for reports and
resolves the asyncio futures with ``call_soon_threadsafe``, like the Kafka bus does.
``message.timeout.ms`` is the connector's ``timeout_s``.

Targets are vetted against the operator's
:class:`~fieldgate.cloud.domain.connectors.targets.TargetPolicy`: the bootstrap brokers before the
producer is made, and the brokers the cluster advertises in its metadata right after (and
again every ``METADATA_CHECK_S``) — librdkafka connects to those by itself, so a cluster that
advertises an inside address is refused (deliveries fail permanently, ``target refused: …``).
librdkafka resolves names itself, so between two checks a name could point elsewhere; allow
Kafka connectors only where that residual risk is acceptable (docs/connectors.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from fieldgate.cloud.domain.connectors.events import encode_document, event_document
from fieldgate.cloud.domain.connectors.models import DeliverySpec, KafkaSpec
from fieldgate.cloud.domain.connectors.sink import DeliveryError
from fieldgate.cloud.domain.connectors.targets import TargetPolicy, TargetRefused, kafka_hosts
from fieldgate.v1 import events_pb2 as pb

# Errors that cannot heal by retrying the same message.
_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.INVALID_RECORD,
    }
)


#: How often the brokers of the cluster's metadata are checked again.
METADATA_CHECK_S = 300.0


class KafkaSink:
    def __init__(
        self,
        tenant: str,
        connector: str,
        spec: KafkaSpec,
        delivery: DeliverySpec,
        *,
        targets: TargetPolicy | None = None,
    ) -> None:
        self._connector = connector
        self._targets = targets or TargetPolicy()
        self._checked_at = 0.0  # monotonic time of the last metadata check
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
            hosts = kafka_hosts(self._spec.bootstrap)
        except ValueError as err:
            raise DeliveryError(f"kafka bootstrap: {err}", permanent=True) from err
        for host, port in hosts:
            await self._targets.vet(host, port)
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
        try:
            await self._check_brokers()
        except BaseException:
            await self.stop()
            raise

    async def _check_brokers(self) -> None:
        """Vet the brokers the cluster advertises (its metadata)."""
        producer = self._producer
        assert producer is not None
        try:
            md = await asyncio.to_thread(producer.list_topics, timeout=self._timeout)
        except KafkaException as err:
            raise DeliveryError(f"kafka metadata: {err}") from err
        for broker in md.brokers.values():
            await self._targets.vet(str(broker.host), int(broker.port))
        self._checked_at = time.monotonic()

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
        if time.monotonic() - self._checked_at > METADATA_CHECK_S:
            try:
                await self._check_brokers()
            except TargetRefused:
                await self.stop()
                raise
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
