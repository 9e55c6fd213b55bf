"""From one MQTT message to durable events: shared by the embedded and the external backend.

``(topic, payload)`` → topic contract (:func:`topics.parse_inbound`) → tenant allowed? → size
limit → codec (:func:`decoder_for`) → ``await sink.accept(events)``. The caller acknowledges the
message to its sender (PUBACK) only if the returned :class:`Outcome` says so, i.e. only once
the events are durable or the payload is kept in the failed-decode lane.

Nothing here knows which transport delivered the message; both backends run
:meth:`Dispatcher.handle` at the top of a per-message task, and it never raises (except
cancellation): one bad message cannot break an adapter.

Links: a message on a device's link topic (``connected``/``disconnected``) and every device
whose events were made durable are told to the backend's :class:`~.link.LinkReports`, with
the sending client's id when the backend knows it (the embedded broker).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection, Mapping

from fieldgate.edge.adapters import EventSink
from fieldgate.edge.adapters.mqtt.acl import Principal
from fieldgate.edge.adapters.mqtt.link import LinkReports
from fieldgate.edge.adapters.mqtt.presence import DeviceRegistry, filter_matches
from fieldgate.edge.adapters.mqtt.stats import MqttStats
from fieldgate.edge.errors import BufferFull
from fieldgate.protocol import topics
from fieldgate.protocol.codec import DecodeContext, EventDecoder
from fieldgate.protocol.codec.formats import decoder_for
from fieldgate.protocol.errors import DecodeError
from fieldgate.throttle import LogThrottle
from fieldgate.timeutil import now_ms

log = logging.getLogger(__name__)

_CODECS: tuple[topics.Codec, ...] = ("json", "protobuf", "sitewhere", "sitewhere-protobuf")
_LINK_UP = topics.LINK_CONNECTED.encode()
_LINK_DOWN = topics.LINK_DISCONNECTED.encode()


class Outcome(enum.Enum):
    ACCEPTED = "accepted"  # events are durable
    REJECTED = "rejected"  # payload kept in the failed-decode lane (never redelivered: poison)
    IGNORED = "ignored"  # not a fieldgate topic
    HELD = "held"  # buffer full (reject_new): leave unacknowledged, the sender keeps it
    FAILED = "failed"  # the sink failed: leave unacknowledged, the sender sends it again
    DENIED = "denied"  # names a device its sender may not speak for: acknowledged, dropped, counted

    @property
    def acknowledge(self) -> bool:
        return self in (Outcome.ACCEPTED, Outcome.REJECTED, Outcome.IGNORED, Outcome.DENIED)


class Dispatcher:
    """Decodes and hands over one message; counts every outcome in ``stats``."""

    def __init__(
        self,
        sink: EventSink,
        *,
        tenants: Collection[str],
        max_payload_bytes: int,
        sitewhere_compat: bool,
        stats: MqttStats,
        devices: DeviceRegistry,
        decoders: Mapping[topics.Codec, EventDecoder] | None = None,
        links: LinkReports | None = None,
        sitewhere_1x_tenant: str | None = None,
    ) -> None:
        self._sink = sink
        self._tenants = frozenset(tenants)
        self._max_payload = max_payload_bytes
        self._sitewhere = sitewhere_compat
        self._sitewhere_1x = sitewhere_1x_tenant if sitewhere_compat else None
        self._stats = stats
        self._devices = devices
        self._links = links
        self._decoders = dict(decoders) if decoders is not None else {c: decoder_for(c) for c in _CODECS}
        self._held_log = LogThrottle()
        self._failed_log = LogThrottle()
        self._denied_log = LogThrottle()

    def wants(self, topic: str) -> bool:
        """True for topics this dispatcher handles (the embedded broker relays the others only)."""
        if topic.startswith(topics.ROOT + "/"):
            return any(
                filter_matches(f, topic)
                for f in (topics.EVENTS_FILTER, topics.EVENTS_PB_FILTER, topics.LINK_FILTER)
            )
        if self._sitewhere_1x is not None and topic in topics.SITEWHERE_1X_FILTERS:
            return True
        return self._sitewhere and any(filter_matches(f, topic) for f in topics.SITEWHERE_FILTERS)

    async def handle(
        self, topic: str, payload: bytes, speaker: Principal | None = None, client: str | None = None
    ) -> Outcome:
        """Process one message. Never raises except :class:`asyncio.CancelledError`.

        ``speaker``: the authenticated sender (embedded broker with ``mqtt.auth``); a message
        whose events name a device it may not speak for (a SiteWhere payload's deviceToken) is
        dropped whole and counted, never handed to the sink. ``client``: the sender's MQTT
        client id, when known (the embedded broker), for the devices' link state.
        """
        try:
            return await self._dispatch(topic, payload, speaker, client)
        except BufferFull:
            self._stats.messages_held += 1
            suppressed = self._held_log.ready()
            if suppressed is not None:
                log.warning(
                    "buffer full: message on %s not acknowledged; its sender keeps it and sends it "
                    "again after reconnecting (%d more since the last report)",
                    topic,
                    suppressed,
                )
            return Outcome.HELD
        except Exception:
            # The top of a per-message task: count, report and leave the message unacknowledged.
            self._stats.messages_failed += 1
            suppressed = self._failed_log.ready()
            if suppressed is not None:
                log.exception(
                    "could not hand over message on %s; left unacknowledged (%d more since the last report)",
                    topic,
                    suppressed,
                )
            return Outcome.FAILED

    async def _dispatch(
        self, topic: str, payload: bytes, speaker: Principal | None, client: str | None
    ) -> Outcome:
        link = topics.parse_link_topic(topic)
        if link is not None:
            return await self._link(topic, payload, link, client)
        inbound = topics.parse_inbound(topic, self._sitewhere_1x)
        if inbound is None or (inbound.format == "sitewhere" and not self._sitewhere):
            if self.wants(topic):
                # Structurally one of ours, but a level is not a valid tenant/device token.
                reason = f"invalid tenant or device in topic {topic!r}"
                return await self._reject("topic", payload, topic, "", reason)
            self._stats.messages_ignored += 1
            return Outcome.IGNORED
        tenant = inbound.tenant
        if tenant not in self._tenants:
            return await self._reject("tenant", payload, topic, tenant, f"unknown tenant {tenant!r}")
        size = len(payload)
        if size > self._max_payload:
            return await self._reject(
                "oversize",
                payload[: self._max_payload],
                topic,
                tenant,
                f"payload of {size} bytes exceeds max_payload_bytes={self._max_payload} "
                f"(first {self._max_payload} bytes kept)",
            )
        ctx = DecodeContext(tenant=tenant, device=inbound.device, received_ms=now_ms())
        try:
            events = self._decoders[inbound.codec](payload, ctx)
        except DecodeError as err:
            return await self._reject("decode", payload, topic, tenant, err.reason)
        except Exception as err:
            # A codec bug must not turn this payload into a poison message redelivered forever.
            log.exception("decoder for %s failed on a message on %s", inbound.codec, topic)
            reason = f"decoder error: {type(err).__name__}"
            return await self._reject("decode", payload, topic, tenant, reason)
        if speaker is not None:
            foreign = next((e for e in events if not speaker.speaks_for(e.tenant, e.device)), None)
            if foreign is not None:
                return self._deny(topic, speaker, foreign.tenant, foreign.device)
        if events:
            for event in events:
                # Always ours, never the device's: the cloud filters on it (tenant decoders).
                event.metadata[topics.FORMAT_METADATA_KEY] = inbound.format
            await self._sink.accept(events, source=topic)
            last: tuple[str, str] | None = None
            for event in events:
                key = (event.tenant, event.device)
                if key != last:
                    self._devices.add(*key)
                    if self._links is not None:
                        self._links.spoke(client, *key)
                    last = key
        self._stats.messages_accepted += 1
        self._stats.events_accepted += len(events)
        return Outcome.ACCEPTED

    async def _link(self, topic: str, payload: bytes, link: tuple[str, str], client: str | None) -> Outcome:
        """A device's link report: ``connected`` or ``disconnected`` (exact text)."""
        tenant, device = link
        if tenant not in self._tenants:
            return await self._reject("tenant", payload, topic, tenant, f"unknown tenant {tenant!r}")
        if not payload:
            # An empty (retained) message clears the broker's retained report: no news.
            self._stats.messages_ignored += 1
            return Outcome.IGNORED
        text = payload.strip()
        if text not in (_LINK_UP, _LINK_DOWN):
            reason = (
                f"link: expected {topics.LINK_CONNECTED!r} or {topics.LINK_DISCONNECTED!r}, "
                f"got {payload[:32]!r}"
            )
            return await self._reject("decode", payload[: self._max_payload], topic, tenant, reason)
        self._devices.add(tenant, device)
        if self._links is not None:
            self._links.reported(client, tenant, device, text == _LINK_UP)
        self._stats.link_reports += 1
        return Outcome.ACCEPTED

    def _deny(self, topic: str, speaker: Principal, tenant: str, device: str) -> Outcome:
        self._stats.count_denied("payload")
        suppressed = self._denied_log.ready()
        if suppressed is not None:
            log.warning(
                "MQTT client %s sent a message on %s for device %s/%s it may not speak for; dropped "
                "(%d more refusals since the last report)",
                speaker.describe(),
                topic,
                tenant,
                device,
                suppressed,
            )
        return Outcome.DENIED

    async def _reject(self, kind: str, payload: bytes, topic: str, tenant: str, reason: str) -> Outcome:
        await self._sink.reject(payload, source=topic, reason=reason, tenant=tenant)
        self._stats.count_rejected(kind)
        return Outcome.REJECTED
