"""Kafka bus: :class:`fieldgate.cloud.bus.Bus` on Apache Kafka with confluent-kafka.

The distributed counterpart of the embedded SQLite log (``embedded.py``). The pipeline stages
(``cloud/pipeline/stage.py`` and the stages built on it) run on either unchanged; this module maps the
bus contract onto Kafka:

* **Topics** are ``<prefix>.tenant.<tenant>.<stage>``, created on first publish with the
  configured partitions and replication factor (an existing topic is fine: another process
  may have created it). Records are keyed by device token; the producer's ``murmur2_random``
  partitioner (the Java client's) sends a device's records to one partition, so per-device
  order holds, also for producers written in Java.
* **publish** returns once the broker acknowledged every message (``acks=all``, idempotent
  producer, so retries neither duplicate nor reorder). ``produce`` only enqueues; a dedicated
  thread polls the producer for delivery reports and resolves the publisher's future on the
  event loop, which never blocks. When librdkafka's local queue is full, publishers wait
  (policy *block*, counted in ``stats.produce_waits``). A message not acknowledged within
  ``delivery_timeout_ms`` fails the publish with :class:`BusError` and the broker's reason.
* **Consumers** subscribe by regular expression ``^<prefix>\\.tenant\\..+\\.<stage>$`` so a new
  tenant's topic is picked up after the next metadata refresh (``metadata_refresh_ms``);
  ``auto.offset.reset=earliest`` so the records written before that are read too. Offsets are
  committed only by :meth:`KafkaConsumer.commit` (``enable.auto.commit=false``) — after the
  stage processed the records — synchronously. Consumers in one group share the partitions
  (Kafka's group protocol); each consumer runs every librdkafka call in one thread of its own,
  so rebalance callbacks, consume, commit and seek never race.
* **Rebalances**: a commit only covers partitions this member owns at that moment; records of
  a partition that was revoked while the stage processed them are not committed (their new
  owner reads them again from the group's committed offset — at-least-once, and the stages
  are idempotent), so a former owner never moves the new owner's position.
* **Replay**: :meth:`KafkaBus.reset_offsets` moves a group's committed offsets of one
  tenant's topic to an offset or a time. Kafka only accepts that while the group has no live
  members: stop the stage's replicas first (``kafka-consumer-groups --reset-offsets`` has the
  same rule).

See docs/operations/kafka.md for topic layout, payloads and reading topics with kcat.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka import Consumer as _KConsumer
from confluent_kafka import Message as _KMessage
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from fieldgate.cloud.bus import STAGES, Message, Record, parse_topic, topic_name
from fieldgate.cloud.errors import BusError
from fieldgate.timeutil import now_ms

log = logging.getLogger(__name__)

T = TypeVar("T")

# Commit failures that mean "the group is rebalancing / this member's generation is over":
# the records are re-delivered to whoever owns the partition now, so they are not an error.
_REBALANCE_CODES = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError._ASSIGNMENT_LOST,
    }
)

# Characters that are special in librdkafka's regular expressions (tenant tokens and stage
# names only use [a-z0-9_-], the prefix may contain dots). Python's re.escape also escapes
# '-', which librdkafka's small regex engine does not promise to understand.
_REGEX_SPECIAL = frozenset(".^$*+?()[]{}|\\")


def _regex_escape(text: str) -> str:
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in text)


def stage_pattern(stage: str, prefix: str = "fieldgate") -> str:
    """The subscription pattern of ``stage``: every tenant's topic of that stage."""
    return f"^{_regex_escape(prefix)}\\.tenant\\..+\\.{_regex_escape(stage)}$"


def _reason(err: BaseException | KafkaError) -> str:
    """The broker's or librdkafka's words for a failure (``NAME: text``)."""
    kerr = err if isinstance(err, KafkaError) else (err.args[0] if err.args else None)
    if isinstance(kerr, KafkaError):
        return f"{kerr.name()}: {kerr.str()}"
    return f"{type(err).__name__}: {err}"


def _code(err: BaseException) -> int | None:
    kerr = err.args[0] if err.args else None
    return kerr.code() if isinstance(kerr, KafkaError) else None


@dataclass
class KafkaBusStats:
    """Counters of the Kafka bus (plain attributes, updated on the event loop)."""

    publish_calls: int = 0
    published_records: int = 0
    publish_failures: int = 0
    # produce() found librdkafka's local queue full and the publisher waited (policy: block).
    produce_waits: int = 0
    topics_created: int = 0
    polled_records: int = 0
    offset_commits: int = 0
    # Records not committed because their partition had been revoked (re-read by its new owner).
    commits_skipped: int = 0
    # Commits the broker refused because the group was rebalancing (records are re-delivered).
    commit_conflicts: int = 0
    seeks_ignored: int = 0  # seeks of partitions this member no longer owns


class _Publish:
    """Counts one publish call's delivery reports; settles its future on the event loop.

    ``delivered`` runs in the producer's polling thread, ``abandon`` on the loop (messages that
    were never enqueued), hence the lock around the counter.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], count: int) -> None:
        self._loop = loop
        self._future = future
        self._lock = threading.Lock()
        self._remaining = count
        self._error: str | None = None

    def delivered(self, err: KafkaError | None, _msg: _KMessage) -> None:
        self._account(1, None if err is None else _reason(err))

    def abandon(self, count: int, reason: str) -> None:
        self._account(count, reason)

    def _account(self, count: int, error: str | None) -> None:
        with self._lock:
            if error is not None and self._error is None:
                self._error = error
            self._remaining -= count
            done = self._remaining <= 0
        if done:
            try:
                self._loop.call_soon_threadsafe(self._settle)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                log.debug("delivery report after the event loop closed")

    def _settle(self) -> None:
        if self._future.done():
            return
        if self._error is None:
            self._future.set_result(None)
        else:
            self._future.set_exception(BusError(f"publish failed: {self._error}"))


class KafkaBus:
    """Implements :class:`fieldgate.cloud.bus.Bus` on Kafka (see the module docstring).

    ``bootstrap`` is the brokers' ``host:port`` list. ``producer_config`` / ``consumer_config``
    / ``admin_config`` are extra librdkafka properties (security settings, tuning) merged over
    the defaults. ``start`` is called implicitly by the first publish, but ``stop`` must be
    called (or use ``async with``) so that queued messages are flushed. ``start`` creates the
    topics of every stage of ``tenants`` (the tenants known at start); others are created on
    their first publish.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        prefix: str = "fieldgate",
        partitions: int = 3,
        replication: int = 1,
        topic_config: Mapping[str, str] | None = None,
        client_id: str = "fieldgate",
        delivery_timeout_ms: int = 30_000,
        linger_ms: int = 5,
        session_timeout_ms: int = 10_000,
        metadata_refresh_ms: int = 5_000,
        assignment_strategy: str = "cooperative-sticky",
        request_timeout_s: float = 30.0,
        producer_config: Mapping[str, Any] | None = None,
        consumer_config: Mapping[str, Any] | None = None,
        admin_config: Mapping[str, Any] | None = None,
        tenants: Iterable[str] = (),
    ) -> None:
        if partitions < 1 or replication < 1:
            raise ValueError("partitions and replication must be >= 1")
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.partitions = partitions
        self.replication = replication
        self._topic_config = dict(topic_config or {})
        self._client_id = client_id
        self._request_timeout_s = request_timeout_s
        self._common: dict[str, Any] = {"bootstrap.servers": bootstrap, "client.id": client_id}
        self._producer_config: dict[str, Any] = {
            **self._common,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "delivery.timeout.ms": delivery_timeout_ms,
            "partitioner": "murmur2_random",
            "error_cb": self._on_client_error,
            "logger": log,
            **(producer_config or {}),
        }
        self._consumer_config: dict[str, Any] = {
            **self._common,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "topic.metadata.refresh.interval.ms": metadata_refresh_ms,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(100, session_timeout_ms // 4),
            "partition.assignment.strategy": assignment_strategy,
            "enable.partition.eof": False,
            "error_cb": self._on_client_error,
            "logger": log,
            **(consumer_config or {}),
        }
        self._admin_config: dict[str, Any] = {
            **self._common,
            "error_cb": self._on_client_error,
            "logger": log,
            **(admin_config or {}),
        }
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        self._flush_timeout_s = 10.0
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._known_topics: set[str] = set()
        self._initial_tenants = tuple(tenants)
        self._creating: dict[str, asyncio.Future[None]] = {}
        self.stats = KafkaBusStats()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Create the producer and admin client and check that a broker answers."""
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise BusError("kafka bus was stopped; create a new one")
            try:
                admin = AdminClient(self._admin_config)
                metadata = await asyncio.to_thread(admin.list_topics, timeout=self._request_timeout_s)
                producer = Producer(self._producer_config)
            except KafkaException as err:
                raise BusError(f"kafka at {self.bootstrap} unavailable: {_reason(err)}") from err
            self._admin = admin
            self._producer = producer
            self._known_topics.update(t for t in metadata.topics if t.startswith(f"{self.prefix}.tenant."))
            self._stop_polling.clear()
            self._poller = threading.Thread(
                target=self._poll_producer, args=(producer,), name="kafka-bus-producer", daemon=True
            )
            self._poller.start()
            self._started = True
            log.info("kafka bus at %s: %d fieldgate topics", self.bootstrap, len(self._known_topics))
        # The known tenants' topics exist before any stage subscribes, so their first events
        # do not wait for a metadata refresh and a rebalance at every stage of the pipeline.
        await asyncio.gather(
            *(
                self.ensure_topic(topic_name(tenant, stage, self.prefix))
                for tenant in self._initial_tenants
                for stage in STAGES
            )
        )

    async def stop(self, flush_timeout_s: float = 10.0) -> None:
        """Flush queued messages (up to ``flush_timeout_s``); publishes still waiting fail."""
        async with self._start_lock:
            if self._closed:
                return
            self._closed = True
            if not self._started or self._poller is None:
                return
            self._stop_polling.set()
            poller, self._poller = self._poller, None
            # The poller flushes, then purges what is left (failing those publishes), and ends.
            self._flush_timeout_s = flush_timeout_s
            await asyncio.to_thread(poller.join)
            self._producer = None
            self._admin = None

    async def ping(self, timeout_s: float = 1.5) -> None:
        """Readiness: a broker answers a metadata request within ``timeout_s`` (BusError if not)."""
        admin = self._admin
        if admin is None or self._closed:
            raise BusError("kafka bus is not running")
        try:
            await asyncio.to_thread(admin.list_topics, timeout=timeout_s)
        except KafkaException as err:
            raise BusError(f"kafka at {self.bootstrap} unavailable: {_reason(err)}") from err

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _poll_producer(self, producer: Producer) -> None:
        """The producer's thread: serve delivery reports until stopped, then flush."""
        while not self._stop_polling.is_set():
            producer.poll(0.1)
        left = producer.flush(self._flush_timeout_s)
        if left:
            log.warning("kafka bus stopped with %d messages not acknowledged; failing them", left)
            producer.purge()
            producer.poll(0)

    def _on_client_error(self, err: KafkaError) -> None:
        """librdkafka's out-of-band errors (broker down, ...): it retries by itself."""
        if err.fatal():
            log.error("kafka client fatal error: %s", _reason(err))
        else:
            log.warning("kafka client: %s", _reason(err))

    # ---------------------------------------------------------------- topics

    async def ensure_topic(self, topic: str) -> None:
        """Create ``topic`` with the configured partitions/replication unless it exists."""
        if topic in self._known_topics:
            return
        pending = self._creating.get(topic)
        if pending is None:
            pending = self._creating[topic] = asyncio.ensure_future(self._create_topic(topic))
        try:
            await asyncio.shield(pending)
        finally:
            if pending.done():
                self._creating.pop(topic, None)

    async def _create_topic(self, topic: str) -> None:
        assert self._admin is not None
        spec = NewTopic(
            topic,
            num_partitions=self.partitions,
            replication_factor=self.replication,
            config=self._topic_config,
        )
        futures = self._admin.create_topics([spec], operation_timeout=self._request_timeout_s)
        try:
            await asyncio.wrap_future(futures[topic])
            self.stats.topics_created += 1
            log.info("created kafka topic %s (%d partitions)", topic, self.partitions)
        except KafkaException as err:
            if _code(err) != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BusError(f"cannot create topic {topic}: {_reason(err)}") from err
        self._known_topics.add(topic)

    async def ensure_tenant_topics(self, tenant: str) -> list[str]:
        """Create every stage's topic of ``tenant`` now (so consumers subscribe to them on
        their next metadata refresh, before the first event); their names."""
        await self.start()
        names = [topic_name(tenant, stage, self.prefix) for stage in STAGES]
        await asyncio.gather(*(self.ensure_topic(name) for name in names))
        return names

    async def delete_tenant_topics(self, tenant: str) -> list[str]:
        """Delete every stage's topic of ``tenant`` (the admin client's ``delete_topics``);
        the topics the broker deleted (absent ones are skipped). The broker removes them and
        the groups' committed offsets of them in the background."""
        await self.start()
        assert self._admin is not None
        names = [topic_name(tenant, stage, self.prefix) for stage in STAGES]
        metadata = await asyncio.to_thread(self._admin.list_topics, timeout=self._request_timeout_s)
        present = [n for n in names if n in metadata.topics]
        for name in names:
            self._known_topics.discard(name)
        if not present:
            return []
        futures = self._admin.delete_topics(present, operation_timeout=self._request_timeout_s)
        deleted: list[str] = []
        for name, future in futures.items():
            try:
                await asyncio.wrap_future(future)
            except KafkaException as err:
                if _code(err) != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise BusError(f"cannot delete topic {name}: {_reason(err)}") from err
                continue
            deleted.append(name)
            log.info("deleted kafka topic %s", name)
        return sorted(deleted)

    def forget_tenant(self, tenant: str) -> None:
        """Forget that the tenant's topics exist (another process deleted them), so that a
        publish for a tenant created again under that token creates them properly."""
        for stage in STAGES:
            self._known_topics.discard(topic_name(tenant, stage, self.prefix))

    # ---------------------------------------------------------------- producing

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Produce ``messages`` to ``topic`` keyed by device; returns once all are acknowledged."""
        try:
            parse_topic(topic, self.prefix)
        except ValueError as err:
            raise BusError(str(err)) from err
        if not messages:
            return
        await self.start()
        if self._closed or self._producer is None:
            raise BusError("kafka bus is stopped")
        await self.ensure_topic(topic)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        report = _Publish(loop, future, len(messages))
        producer = self._producer
        self.stats.publish_calls += 1
        abandoned = False
        for i, msg in enumerate(messages):
            while True:
                try:
                    producer.produce(topic, value=msg.value, key=msg.key, on_delivery=report.delivered)
                    break
                except BufferError:  # local queue full: wait for deliveries (policy: block)
                    self.stats.produce_waits += 1
                    await asyncio.sleep(0.005)
                except KafkaException as err:  # e.g. message too large: the rest is not sent
                    report.abandon(len(messages) - i, _reason(err))
                    abandoned = True
                    break
            if abandoned:
                break
        try:
            await future
        except BusError:
            self.stats.publish_failures += 1
            raise
        self.stats.published_records += len(messages)

    # ---------------------------------------------------------------- consuming

    def consumer(self, group: str, stage: str, *, tail: bool = False) -> KafkaConsumer:
        """A member of ``group`` reading every tenant's topic of ``stage``. ``tail``: the
        group has no committed offsets and starts at the end (``auto.offset.reset=latest``);
        it never commits, so Kafka keeps nothing of it once it leaves."""
        return KafkaConsumer(self, group, stage, tail=tail)

    def _new_consumer_config(self, group: str, *, tail: bool = False) -> dict[str, Any]:
        config = {**self._consumer_config, "group.id": group}
        if tail:
            config["auto.offset.reset"] = "latest"
        return config

    # ---------------------------------------------------------------- operations (replay, lag)

    async def partitions_of(self, topic: str) -> list[int]:
        """The partition numbers of ``topic`` (empty if it does not exist)."""
        admin = self._admin or AdminClient(self._admin_config)
        try:
            # All topics, not list_topics(topic): asking for one topic by name makes a broker
            # with auto.create.topics.enable create it.
            md = await asyncio.to_thread(admin.list_topics, timeout=self._request_timeout_s)
        except KafkaException as err:
            raise BusError(f"cannot read metadata of {topic}: {_reason(err)}") from err
        info = md.topics.get(topic)
        if info is None or info.error is not None:
            return []
        return sorted(info.partitions)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """``{partition: next offset to be written}`` of ``topic``."""
        parts = await self.partitions_of(topic)
        return await asyncio.to_thread(self._watermarks, topic, parts, "high")

    async def topic_end_offsets(self, topic: str) -> dict[int, int]:
        """:meth:`end_offsets` ({} if the topic does not exist), the Bus protocol's name."""
        return await self.end_offsets(topic)

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """``{partition: committed offset (next to read)}`` of ``group`` on ``topic``."""
        parts = await self.partitions_of(topic)
        return await asyncio.to_thread(self._committed, group, topic, parts)

    async def reset_offsets(
        self,
        group: str,
        stage: str,
        tenant: str,
        *,
        to_offset: int | None = None,
        to_time_ms: int | None = None,
    ) -> dict[int, int]:
        """Move ``group``'s committed offsets of ``tenant``'s ``stage`` topic (replay or skip).

        Give exactly one of ``to_offset`` (per partition, clamped to what the partition holds;
        0 = from the beginning) or ``to_time_ms`` (per partition, the first record stamped at
        or after it; the end if none). The group must have no live members (stop the stage's
        replicas; Kafka refuses otherwise). Returns ``{partition: new committed offset}``.
        """
        if (to_offset is None) == (to_time_ms is None):
            raise BusError("give exactly one of to_offset or to_time_ms")
        topic = topic_name(tenant, stage, self.prefix)
        parts = await self.partitions_of(topic)
        if not parts:
            return {}
        targets = await asyncio.to_thread(self._targets, topic, parts, to_offset, to_time_ms)
        admin = self._admin or AdminClient(self._admin_config)
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p, off) for p, off in targets.items()]
        )
        futures = admin.alter_consumer_group_offsets([request], request_timeout=self._request_timeout_s)
        try:
            results = [await asyncio.wrap_future(fut) for fut in futures.values()]
        except KafkaException as err:
            raise BusError(
                f"cannot reset offsets of group {group!r} on {topic} "
                f"(stop its consumers first): {_reason(err)}"
            ) from err
        # Kafka may accept the request but refuse partitions one by one (e.g. a live member).
        refused = [
            f"partition {tp.partition}: {tp.error}"
            for result in results
            for tp in getattr(result, "topic_partitions", None) or ()
            if getattr(tp, "error", None) is not None
        ]
        if refused:
            raise BusError(
                f"cannot reset offsets of group {group!r} on {topic} (stop its consumers first): "
                + "; ".join(refused)
            )
        # Not every broker reports such a refusal in the result: read the offsets back, so a
        # refused reset is never reported as done.
        committed = await self.committed(group, topic)
        if any(committed.get(p) != off for p, off in targets.items()):
            raise BusError(
                f"cannot reset offsets of group {group!r} on {topic} (stop its consumers first): "
                f"committed offsets are {committed}, not {targets}"
            )
        log.info("reset group %s on %s to %s", group, topic, targets)
        return targets

    def _scratch_consumer(self, group: str) -> _KConsumer:
        """A consumer that never subscribes (so never joins ``group``): for offset look-ups."""
        config = {
            **self._common,
            "group.id": group,
            "enable.auto.commit": False,
            "error_cb": self._on_client_error,
            "logger": log,
        }
        return _KConsumer(config)

    def _watermarks(self, topic: str, parts: list[int], which: str) -> dict[int, int]:
        c = self._scratch_consumer(f"{self._client_id}-offsets")
        try:
            out = {}
            for p in parts:
                low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=self._request_timeout_s)
                out[p] = high if which == "high" else low
            return out
        except KafkaException as err:
            raise BusError(f"cannot read offsets of {topic}: {_reason(err)}") from err
        finally:
            c.close()

    def _committed(self, group: str, topic: str, parts: list[int]) -> dict[int, int]:
        c = self._scratch_consumer(group)
        try:
            tps = c.committed([TopicPartition(topic, p) for p in parts], timeout=self._request_timeout_s)
            return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
        except KafkaException as err:
            raise BusError(f"cannot read committed offsets of {group!r}: {_reason(err)}") from err
        finally:
            c.close()

    def _targets(
        self, topic: str, parts: list[int], to_offset: int | None, to_time_ms: int | None
    ) -> dict[int, int]:
        c = self._scratch_consumer(f"{self._client_id}-offsets")
        try:
            marks = {
                p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=self._request_timeout_s)
                for p in parts
            }
            if to_offset is not None:
                return {p: min(max(to_offset, low), high) for p, (low, high) in marks.items()}
            assert to_time_ms is not None
            found = c.offsets_for_times(
                [TopicPartition(topic, p, to_time_ms) for p in parts], timeout=self._request_timeout_s
            )
            return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}
        except KafkaException as err:
            raise BusError(f"cannot look up offsets of {topic}: {_reason(err)}") from err
        finally:
            c.close()


class KafkaConsumer:
    """A member of consumer group ``group`` reading every tenant's topic of ``stage``.

    Obtain it from :meth:`KafkaBus.consumer` and use it as an async context manager; leaving
    it closes the Kafka consumer, which leaves the group at once so the remaining members take
    over its partitions. All librdkafka calls of one consumer run in its own thread, one at a
    time (librdkafka's consumer must not be used concurrently, and rebalance callbacks then
    run in that same thread, between calls that see a consistent assignment).
    """

    def __init__(self, bus: KafkaBus, group: str, stage: str, *, tail: bool = False) -> None:
        self._bus = bus
        self.group = group
        self.stage = stage
        self.tail = tail
        self.pattern = stage_pattern(stage, bus.prefix)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._consumer: _KConsumer | None = None
        self._closed = False
        # A consume() whose caller was cancelled: its records go to the next poll, not lost.
        self._inflight: asyncio.Future[list[Record]] | None = None
        self._stash: list[Record] = []
        # Written only in the consumer thread (rebalance callbacks); read anywhere.
        self._assignment: frozenset[tuple[str, int]] = frozenset()
        # (topic, partition) -> the offset after the highest record read since it was assigned
        # (consumer thread only; a seek back does not lower it).
        self._read_high: dict[tuple[str, int], int] = {}
        self.rebalances = 0

    @property
    def assignment(self) -> frozenset[tuple[str, int]]:
        """The (topic, partition) pairs this member owns (as of its last poll)."""
        return self._assignment

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def __aenter__(self) -> Self:
        if self._executor is not None:
            raise BusError("consumer already entered")
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"kafka-{self.group}-{self.stage}"
        )
        try:
            await self._run(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._closed = True
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._closed or self._executor is None:
            return
        self._closed = True
        executor = self._executor
        # Queued behind any consume() still running (at most its timeout), then leaves the group.
        close = asyncio.get_running_loop().run_in_executor(executor, self._close)
        try:
            await asyncio.shield(close)
        finally:
            executor.shutdown(wait=False)

    # -- consumer thread --------------------------------------------------------------------

    def _open(self) -> None:
        try:
            c = _KConsumer(self._bus._new_consumer_config(self.group, tail=self.tail))
            c.subscribe(
                [self.pattern], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
        except KafkaException as err:
            raise BusError(f"cannot subscribe {self.group} to {self.pattern}: {_reason(err)}") from err
        self._consumer = c

    def _close(self) -> None:
        c, self._consumer = self._consumer, None
        if c is None:
            return
        try:
            c.close()
        except (KafkaException, RuntimeError) as err:
            log.warning("closing kafka consumer %s/%s: %s", self.group, self.stage, _reason(err))

    def _on_assign(self, _c: _KConsumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        self._assignment = self._assignment | {(tp.topic, tp.partition) for tp in partitions}
        for tp in partitions:
            self._read_high.pop((tp.topic, tp.partition), None)
        log.info("%s/%s assigned %s", self.group, self.stage, sorted(self._assignment))

    def _on_revoke(self, _c: _KConsumer, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._assignment = self._assignment - gone
        for key in gone:
            self._read_high.pop(key, None)
        log.info("%s/%s revoked %d partitions", self.group, self.stage, len(gone))

    def _on_lost(self, c: _KConsumer, partitions: list[TopicPartition]) -> None:
        log.warning("%s/%s lost %d partitions (session expired)", self.group, self.stage, len(partitions))
        self._on_revoke(c, partitions)

    def _consume(self, max_records: int, timeout_s: float) -> list[Record]:
        c = self._consumer
        if c is None:
            raise BusError("consumer is closed")
        try:
            # consume(n, timeout) would wait for n messages or the whole timeout; a stage wants
            # what is there now, else the first record as soon as it arrives (plus what came
            # with it). So: take the local queue without waiting, else block on one poll.
            msgs = c.consume(max_records, 0)
            if not msgs:
                first = c.poll(timeout_s)
                if first is None:
                    return []
                msgs = [first, *c.consume(max_records - 1, 0)] if max_records > 1 else [first]
        except KafkaException as err:
            raise BusError(f"consume failed: {_reason(err)}") from err
        out: list[Record] = []
        for m in msgs:
            problem = m.error()
            if problem is not None:
                if problem.fatal():
                    raise BusError(f"consumer failed: {_reason(problem)}")
                log.warning("%s/%s: %s", self.group, self.stage, _reason(problem))
                continue
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            if topic is None or partition is None or offset is None:
                continue
            key = (topic, partition)
            self._read_high[key] = max(self._read_high.get(key, 0), offset + 1)
            ts_type, ts = m.timestamp()
            out.append(
                Record(
                    topic,
                    partition,
                    offset,
                    m.key() or b"",
                    m.value() or b"",
                    now_ms() if ts_type == TIMESTAMP_NOT_AVAILABLE else ts,
                )
            )
        return out

    def _commit(self, highest: dict[tuple[str, int], int]) -> tuple[int, int]:
        """Commit owned partitions; returns (records' partitions skipped, conflicts)."""
        c = self._consumer
        if c is None:
            raise BusError("consumer is closed")
        owned = {(tp.topic, tp.partition) for tp in c.assignment()}
        # Never past what this member has read of the partition since it was assigned: records
        # of a topic deleted since (a deleted tenant's, committed late) must not move the offset
        # of the topic created again under that name, or its first records would be skipped.
        # What it has read, not its position: after a seek back (a connector noticed late reads
        # records again) the records read before the seek may still be committed.
        offsets = [
            TopicPartition(t, p, min(off + 1, self._read_high[(t, p)]))
            for (t, p), off in highest.items()
            if (t, p) in owned and (t, p) in self._read_high
        ]
        skipped = len(highest) - len(offsets)
        if not offsets:
            return skipped, 0
        try:
            result = c.commit(offsets=offsets, asynchronous=False)
        except KafkaException as err:
            if _code(err) in _REBALANCE_CODES:
                log.info("%s/%s: commit refused during a rebalance: %s", self.group, self.stage, _reason(err))
                return skipped, 1
            raise BusError(f"commit failed: {_reason(err)}") from err
        for tp in result:
            if tp.error is not None:
                if tp.error.code() in _REBALANCE_CODES:
                    return skipped, 1
                raise BusError(f"commit of {tp.topic}[{tp.partition}] failed: {_reason(tp.error)}")
        return skipped, 0

    def _seek(self, topic: str, partition: int, offset: int) -> bool:
        c = self._consumer
        if c is None:
            raise BusError("consumer is closed")
        if (topic, partition) not in {(tp.topic, tp.partition) for tp in c.assignment()}:
            return False  # not ours any more: the new owner starts at the committed offset
        try:
            c.seek(TopicPartition(topic, partition, offset))
        except KafkaException as err:
            raise BusError(f"seek {topic}[{partition}] to {offset} failed: {_reason(err)}") from err
        return True

    # -- the Consumer protocol (event loop) -------------------------------------------------

    def _check(self) -> None:
        if self._executor is None or self._closed:
            raise BusError("consumer is not open (use 'async with bus.consumer(...)')")

    async def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records; waits up to ``timeout_s`` for the first."""
        self._check()
        if self._stash:
            out, self._stash = self._stash[:max_records], self._stash[max_records:]
            return out
        fut = self._inflight
        if fut is None:
            loop = asyncio.get_running_loop()
            assert self._executor is not None
            fut = self._inflight = loop.run_in_executor(
                self._executor, self._consume, max(1, max_records), max(0.0, timeout_s)
            )
        records = await asyncio.shield(fut)  # cancelled: the records wait in _inflight
        self._inflight = None
        self._bus.stats.polled_records += len(records)
        return records

    async def _drain_inflight(self) -> None:
        fut, self._inflight = self._inflight, None
        if fut is not None:
            self._stash.extend(await fut)

    async def commit(self, records: Sequence[Record]) -> None:
        """Commit, per owned (topic, partition), the offset after the highest of ``records``."""
        self._check()
        if self.tail:
            return  # a tail reader's group must not keep offsets (it would replay from them)
        highest: dict[tuple[str, int], int] = {}
        for rec in records:
            key = (rec.topic, rec.partition)
            highest[key] = max(highest.get(key, -1), rec.offset)
        if not highest:
            return
        skipped, conflicts = await self._run(self._commit, highest)
        stats = self._bus.stats
        stats.offset_commits += 1
        stats.commits_skipped += skipped
        stats.commit_conflicts += conflicts

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        """The next poll of ``topic[partition]`` starts at ``offset`` (if this member owns it)."""
        self._check()
        try:
            _tenant, stage = parse_topic(topic, self._bus.prefix)
        except ValueError as err:
            raise BusError(str(err)) from err
        if stage != self.stage:
            raise BusError(f"topic {topic!r} is not of this consumer's stage {self.stage!r}")
        await self._drain_inflight()
        self._stash = [r for r in self._stash if (r.topic, r.partition) != (topic, partition)]
        if not await self._run(self._seek, topic, partition, max(offset, 0)):
            self._bus.stats.seeks_ignored += 1


__all__ = ["KafkaBus", "KafkaBusStats", "KafkaConsumer", "stage_pattern"]
