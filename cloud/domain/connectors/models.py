"""Typed definitions of outbound connectors: what a tenant configures through REST.

A connector is one destination (``kind``: ``webhook``, ``mqtt`` or ``kafka``) with a filter
(which of the tenant's persisted events it wants) and delivery knobs (attempts, back-off,
timeout, queue size and overflow policy). The kind's own settings sit in a section named like
the kind (``webhook: {...}``), and exactly that section must be present — a definition that
names ``kind: mqtt`` but carries a ``webhook`` section is refused, with the field named, so a
typo never silently turns into a connector that sends nothing.

Secrets (the webhook's HMAC key, the MQTT password, Kafka's SASL password) are ``SecretStr``:
they are stored (the stage needs them to sign and to log in) but never returned by the API
(:class:`ConnectorOut` carries ``*_set`` flags instead).
"""

from __future__ import annotations

import json
import re
import string
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    Strict,
    StrictBool,
    StrictFloat,
    field_validator,
    model_validator,
)

from fieldgate.cloud.jsontypes import JsonInt, integral
from fieldgate.v1 import events_pb2 as pb

CONNECTOR_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"

#: The event types a filter can name: the payload fields of ``pb.Event``.
EVENT_TYPES: tuple[str, ...] = tuple(f.name for f in pb.Event.DESCRIPTOR.oneofs_by_name["payload"].fields)

#: Placeholders a topic template may use.
TOPIC_FIELDS = frozenset({"tenant", "device", "type", "assignment", "connector"})

_KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_PATTERN = re.compile(r"^[A-Za-z0-9_.:*?\[\]-]{1,128}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")

Kind = Literal["webhook", "mqtt", "kafka"]
Overflow = Literal["block", "dead_letter"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def topic_placeholders(template: str) -> set[str]:
    """The ``{name}`` fields of ``template``; ValueError for a malformed template."""
    names: set[str] = set()
    for _text, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if spec or conv:
            raise ValueError(f"placeholder {{{name}}} must not have a format spec or conversion")
        names.add(name)
    return names


class FilterSpec(_Model):
    """Which events a connector gets. Every non-empty list must match (AND across lists, OR
    within one); an empty list matches everything. ``devices`` are shell-style patterns of
    device tokens (``thermo-*``); ``groups`` are device groups (the site store) the device is
    in, nested groups included; ``areas`` match the area of the event's assignment or an area
    above it (a filter on a site matches its halls); ``customers`` the assignment's customer (an
    event without an assignment matches no area/customer filter). Memberships and area parents
    are read through a short cache, so a change takes effect within 5 s."""

    event_types: tuple[Annotated[str, Field(json_schema_extra={"enum": list(EVENT_TYPES)})], ...] = ()
    device_types: tuple[str, ...] = ()
    devices: tuple[Annotated[str, Field(pattern=_PATTERN.pattern)], ...] = Field(
        (), description="device token patterns, fnmatch style"
    )
    areas: tuple[str, ...] = ()
    customers: tuple[str, ...] = ()
    groups: tuple[str, ...] = Field((), description="device group tokens (nested groups included)")

    @field_validator("event_types")
    @classmethod
    def _known_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in v if t not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; known: {', '.join(EVENT_TYPES)}")
        return v

    @field_validator("devices")
    @classmethod
    def _patterns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in v if not _PATTERN.match(p)]
        if bad:
            raise ValueError(f"invalid device token pattern(s) {bad}")
        return v


class DeliverySpec(_Model):
    """How hard a connector tries, and what happens when it cannot keep up."""

    max_attempts: Annotated[int, Field(ge=1, le=100), BeforeValidator(integral), Strict()] = 8
    initial_backoff_s: StrictFloat = Field(0.5, gt=0, le=60)
    max_backoff_s: StrictFloat = Field(30.0, gt=0, le=3600)
    timeout_s: StrictFloat = Field(10.0, gt=0, le=120)
    # Events waiting for this connector (its retry queue), in memory; then `overflow` applies.
    queue_size: Annotated[int, Field(ge=1, le=100_000), BeforeValidator(integral), Strict()] = 1000
    # block: the stage stops reading until there is room (every connector of the stage waits);
    # dead_letter: the event goes to the connector's dead letters at once and the stage goes on.
    overflow: Overflow = "dead_letter"
    # Events per delivery (webhook: a JSON document {"events": [...]} when > 1).
    batch_size: Annotated[int, Field(ge=1, le=500), BeforeValidator(integral), Strict()] = 1

    @model_validator(mode="after")
    def _backoff_order(self) -> Self:
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("max_backoff_s must not be less than initial_backoff_s")
        return self


class WebhookSpec(_Model):
    url: AnyHttpUrl
    # HMAC-SHA256 key of the X-Fieldgate-Signature header; write-only.
    secret: SecretStr | None = Field(None, min_length=16, max_length=512)
    headers: dict[str, str] = Field(
        default_factory=dict,
        max_length=20,
        json_schema_extra={"propertyNames": {"pattern": _HEADER_NAME.pattern}},
    )

    @field_validator("headers")
    @classmethod
    def _no_reserved(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            low = name.lower()
            if low.startswith("x-fieldgate-") or low in {"content-type", "idempotency-key", "content-length"}:
                raise ValueError(f"header {name!r} is set by fieldgate")
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
        return v


class MqttSpec(_Model):
    host: str = Field(min_length=1, max_length=255)
    port: Annotated[int, Field(ge=1, le=65535), BeforeValidator(integral), Strict()] = 1883
    topic: str = Field(
        "fieldgate/{tenant}/outbound/{device}/{type}",
        min_length=1,
        max_length=512,
        # as _template checks: the known placeholders, no other braces, no wildcards
        pattern=r"^[^#+{}]*(\{(tenant|device|type|assignment|connector)\}[^#+{}]*)*$",
    )
    qos: Literal[1] = 1
    client_id: str = Field("", max_length=128)
    username: str | None = Field(None, max_length=256)
    password: SecretStr | None = Field(None, max_length=512)
    tls: StrictBool = False

    @field_validator("topic")
    @classmethod
    def _template(cls, v: str) -> str:
        names = topic_placeholders(v)
        unknown = names - TOPIC_FIELDS
        if unknown:
            raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; known: {sorted(TOPIC_FIELDS)}")
        if "#" in v or "+" in v:
            raise ValueError("a publish topic must not contain the wildcards # or +")
        return v


class KafkaSpec(_Model):
    bootstrap: str = Field(min_length=1, max_length=1024)
    topic: str = Field(min_length=1, max_length=249, pattern=_KAFKA_TOPIC.pattern)
    # Extra librdkafka producer properties (security.protocol, sasl.*, ...).
    config: dict[str, str | JsonInt | StrictBool] = Field(default_factory=dict, max_length=50)
    sasl_password: SecretStr | None = Field(None, max_length=512)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not _KAFKA_TOPIC.match(v) or v in {".", ".."}:
            raise ValueError("a Kafka topic name is 1-249 characters of [A-Za-z0-9._-]")
        return v

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        for key in v:
            if key in {"bootstrap.servers", "sasl.password"} or key.endswith("_cb"):
                raise ValueError(f"property {key!r} cannot be set here")
        return v


class ConnectorSpec(_Model):
    """A connector as stored (and as the stage runs it)."""

    id: str = Field(pattern=CONNECTOR_ID_PATTERN)
    kind: Kind
    name: str = Field("", max_length=200)
    enabled: StrictBool = True
    filter: FilterSpec = FilterSpec()
    delivery: DeliverySpec = DeliverySpec()
    webhook: WebhookSpec | None = None
    mqtt: MqttSpec | None = None
    kafka: KafkaSpec | None = None
    updated_ms: int = 0

    @model_validator(mode="after")
    def _one_section(self) -> Self:
        sections = {"webhook": self.webhook, "mqtt": self.mqtt, "kafka": self.kafka}
        if sections[self.kind] is None:
            raise ValueError(f"{self.kind}: required for kind {self.kind!r}")
        extra = [name for name, sec in sections.items() if sec is not None and name != self.kind]
        if extra:
            raise ValueError(f"{extra[0]}: not allowed for kind {self.kind!r}")
        return self

    def to_json(self) -> str:
        """The stored form, secrets included (the store is as protected as the registry)."""
        data = self.model_dump(mode="json")
        for section, key in (("webhook", "secret"), ("mqtt", "password"), ("kafka", "sasl_password")):
            sec = getattr(self, section)
            if sec is not None and getattr(sec, key) is not None:
                data[section][key] = getattr(sec, key).get_secret_value()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ConnectorSpec:
        return cls.model_validate_json(text)

    def with_secrets_of(self, old: ConnectorSpec) -> ConnectorSpec:
        """This definition with ``old``'s secrets where this one gives none (a PUT that leaves
        a write-only secret out keeps it)."""
        updates: dict[str, object] = {}
        for section, key in (("webhook", "secret"), ("mqtt", "password"), ("kafka", "sasl_password")):
            new_sec, old_sec = getattr(self, section), getattr(old, section)
            if new_sec is not None and old_sec is not None and getattr(new_sec, key) is None:
                kept = getattr(old_sec, key)
                if kept is not None:
                    updates[section] = new_sec.model_copy(update={key: kept})
        return self.model_copy(update=updates) if updates else self


# The section named by ``kind``, and no other (as ConnectorSpec._one_section checks), in the
# document too.
_KINDS: tuple[Kind, ...] = ("webhook", "mqtt", "kafka")
_ONE_SECTION: dict[str, Any] = {
    "oneOf": [
        {
            "properties": {
                "kind": {"const": kind},
                kind: {"not": {"type": "null"}},
                **{other: {"type": "null"} for other in _KINDS if other != kind},
            },
            "required": ["kind", kind],
        }
        for kind in _KINDS
    ]
}


class ConnectorIn(ConnectorSpec):
    """The REST body of POST/PUT (``updated_ms`` is set by the server)."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_ONE_SECTION)

    updated_ms: JsonInt = Field(0, exclude=True)


class WebhookOut(_Model):
    url: str
    headers: dict[str, str]
    secret_set: bool


class MqttOut(_Model):
    host: str
    port: int
    topic: str
    qos: int
    client_id: str
    username: str | None
    password_set: bool
    tls: bool


class KafkaOut(_Model):
    bootstrap: str
    topic: str
    config: dict[str, str | int | bool]
    sasl_password_set: bool


class ConnectorOut(_Model):
    """A connector as the API shows it: everything but the secrets."""

    id: str
    kind: Kind
    name: str
    enabled: bool
    filter: FilterSpec
    delivery: DeliverySpec
    webhook: WebhookOut | None = None
    mqtt: MqttOut | None = None
    kafka: KafkaOut | None = None
    updated_ms: int

    @classmethod
    def from_spec(cls, spec: ConnectorSpec) -> ConnectorOut:
        w, m, k = spec.webhook, spec.mqtt, spec.kafka
        return cls(
            id=spec.id,
            kind=spec.kind,
            name=spec.name,
            enabled=spec.enabled,
            filter=spec.filter,
            delivery=spec.delivery,
            webhook=None
            if w is None
            else WebhookOut(url=str(w.url), headers=w.headers, secret_set=w.secret is not None),
            mqtt=None
            if m is None
            else MqttOut(
                host=m.host,
                port=m.port,
                topic=m.topic,
                qos=m.qos,
                client_id=m.client_id,
                username=m.username,
                password_set=m.password is not None,
                tls=m.tls,
            ),
            kafka=None
            if k is None
            else KafkaOut(
                bootstrap=k.bootstrap,
                topic=k.topic,
                config=k.config,
                sasl_password_set=k.sasl_password is not None,
            ),
            updated_ms=spec.updated_ms,
        )
