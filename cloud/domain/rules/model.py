"""The rule kinds a tenant can define, as validated data (docs/rules.md).

Every rule is a pydantic model with ``extra="forbid"``: a rule is data, never a code string,
so a bad definition is refused at the door (REST answers 422 naming the field; a ZooKeeper
version is rejected and the previous rules stay in force). Kinds:

* ``threshold`` — a measurement compared with a value, with hysteresis and a duration;
* ``rate_of_change`` — a measurement's change per second over a window;
* ``missing_data`` — a measurement not received for ``after_s`` seconds;
* ``geofence`` — a device's location inside/outside a polygon of [lat, lon] points.

Each applies to the devices its filters select (device types, fnmatch-style token patterns;
empty = every device). A :class:`RuleSet` is a tenant's whole configuration: its rules and the
per-device-type presence intervals the device state stage uses (overriding the tenant's
``presence_interval_s``).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictFloat,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from fieldgate.cloud.jsontypes import integral
from fieldgate.config import Frozen

log = logging.getLogger(__name__)

#: Key of the presence-interval document among a tenant's rule documents (rule ids cannot start
#: with "_"): the state store keeps one row per key.
PRESENCE_INTERVALS_KEY = "_presence_intervals"

RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
MEASUREMENT_PATTERN = r"^[A-Za-z0-9_.:@/-]{1,64}$"
MAX_RULES = 200  # per tenant: every event of a device is evaluated against each matching rule
MAX_POLYGON_POINTS = 500
MAX_INTERVAL_S = 30 * 86_400  # a presence interval: at most 30 days
MAX_PRESENCE_INTERVALS = 1000  # device types with their own presence interval, per tenant

Operator = Literal[">", ">=", "<", "<="]
Level = Literal["info", "warning", "error", "critical"]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class _Rule(Frozen):
    id: str = Field(pattern=RULE_ID_PATTERN, description="the rule's id; also the alert_type of its alerts")
    description: str = Field("", max_length=500)
    enabled: StrictBool = True
    level: Level = "warning"
    # Alert text; without it a message is made from the rule and the value that fired it.
    message: str = Field("", max_length=500)
    device_types: tuple[Annotated[str, Field(min_length=1, max_length=128)], ...] = Field(
        (), max_length=100, description="only devices of these types (empty: every type)"
    )
    devices: tuple[Annotated[str, Field(min_length=1, max_length=128)], ...] = Field(
        (), max_length=100, description="only devices whose token matches one of these patterns (*, ?, [...])"
    )

    def applies_to(self, device: str, device_type: str) -> bool:
        if not self.enabled:
            return False
        if self.device_types and device_type not in self.device_types:
            return False
        return not self.devices or any(fnmatch.fnmatchcase(device, p) for p in self.devices)


class ThresholdRule(_Rule):
    """Raised when ``measurement <operator> value`` has held for ``for_s`` seconds (event
    time); cleared when the value is back past ``value`` by more than ``hysteresis``."""

    kind: Literal["threshold"]
    measurement: str = Field(pattern=MEASUREMENT_PATTERN)
    operator: Operator
    value: StrictFloat
    hysteresis: StrictFloat = Field(0.0, ge=0)
    for_s: StrictFloat = Field(0.0, ge=0, le=7 * 86_400)

    _finite_value = field_validator("value", "hysteresis")(_finite)


class RateOfChangeRule(_Rule):
    """Raised when the measurement's change per second, between the newest sample and the
    oldest one within ``window_s``, compares with ``value`` by ``operator``; cleared (with
    ``hysteresis`` on the rate) when it no longer does."""

    kind: Literal["rate_of_change"]
    measurement: str = Field(pattern=MEASUREMENT_PATTERN)
    operator: Operator
    value: StrictFloat = Field(description="change per second")
    window_s: StrictFloat = Field(gt=0, le=86_400)
    hysteresis: StrictFloat = Field(0.0, ge=0)

    _finite_value = field_validator("value", "hysteresis")(_finite)


class MissingDataRule(_Rule):
    """Raised when the measurement has not been received for ``after_s`` seconds (counted
    from the device's last such measurement, or from the first event the rule saw of the
    device); cleared by the next such measurement."""

    kind: Literal["missing_data"]
    measurement: str = Field(pattern=MEASUREMENT_PATTERN)
    after_s: StrictFloat = Field(gt=0, le=30 * 86_400)


# [lat, lon] (the bounds in the document too; _points checks them and finiteness)
Point = tuple[Annotated[StrictFloat, Field(ge=-90, le=90)], Annotated[StrictFloat, Field(ge=-180, le=180)]]


class GeofenceRule(_Rule):
    """``on: enter`` — raised while the device's location is inside the polygon (cleared when
    it leaves); ``on: leave`` — raised while it is outside (cleared when it is back inside).

    The polygon is given inline as [lat, lon] points (at least 3, not closed: the last point
    joins the first), or ``zone`` names a zone of the tenant (docs/model.md) whose polygon is
    used (:class:`fieldgate.cloud.pipeline.zones.ZonePolygons`); exactly one of the two.
    """

    # Exactly one of the two, in the document too; the REST API also refuses a point given
    # twice (uniqueItems), so that "at least 3 points" there means 3 distinct ones.
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["polygon"],
                    "properties": {"polygon": {"minItems": 3, "uniqueItems": True}, "zone": {"maxLength": 0}},
                },
                {"required": ["zone"], "properties": {"zone": {"minLength": 1}, "polygon": {"maxItems": 0}}},
            ]
        },
    )

    kind: Literal["geofence"]
    on: Literal["enter", "leave"] = "leave"
    polygon: tuple[Point, ...] = Field((), max_length=MAX_POLYGON_POINTS)
    zone: str = Field("", max_length=128, pattern=r"^(|[A-Za-z0-9][A-Za-z0-9_.:@-]*)$")

    @model_validator(mode="after")
    def _polygon_or_zone(self) -> GeofenceRule:
        if bool(self.polygon) == bool(self.zone):
            raise ValueError("a geofence rule needs either a polygon (at least 3 points) or a zone, not both")
        return self

    @field_validator("polygon")
    @classmethod
    def _points(cls, value: tuple[Point, ...]) -> tuple[Point, ...]:
        if not value:
            return value
        for i, (lat, lon) in enumerate(value):
            if not (math.isfinite(lat) and -90 <= lat <= 90):
                raise ValueError(f"point {i}: latitude {lat} is not within [-90, 90]")
            if not (math.isfinite(lon) and -180 <= lon <= 180):
                raise ValueError(f"point {i}: longitude {lon} is not within [-180, 180]")
        if len(set(value)) < 3:
            raise ValueError("needs at least 3 distinct points")
        return value


Rule = Annotated[
    ThresholdRule | RateOfChangeRule | MissingDataRule | GeofenceRule, Field(discriminator="kind")
]
MeasurementRule = ThresholdRule | RateOfChangeRule | MissingDataRule

RULE_ADAPTER: TypeAdapter[Rule] = TypeAdapter(Rule)

PresenceIntervals = Mapping[str, int]


class RuleSet(Frozen):
    """A tenant's rules and its per-device-type presence intervals (seconds)."""

    rules: tuple[Rule, ...] = Field((), max_length=MAX_RULES)
    presence_intervals: dict[
        Annotated[str, Field(min_length=1, max_length=128)],
        Annotated[int, Field(ge=1, le=MAX_INTERVAL_S), BeforeValidator(integral), Strict()],
    ] = Field(default_factory=dict, max_length=MAX_PRESENCE_INTERVALS)

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is defined twice")
            seen.add(rule.id)
        return self

    def get(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def with_rule(self, rule: Rule) -> RuleSet:
        """This set with ``rule`` added, or replacing the rule of the same id (same position)."""
        rules = [rule if r.id == rule.id else r for r in self.rules]
        if not any(r.id == rule.id for r in self.rules):
            rules.append(rule)
        return RuleSet(rules=tuple(rules), presence_intervals=dict(self.presence_intervals))

    def without_rule(self, rule_id: str) -> RuleSet:
        return RuleSet(
            rules=tuple(r for r in self.rules if r.id != rule_id),
            presence_intervals=dict(self.presence_intervals),
        )


def rule_json(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = RULE_ADAPTER.dump_python(rule, mode="json")
    return out


# --- a tenant's rules as the state store keeps them: one JSON document per rule id -------------


def to_documents(rules: RuleSet) -> dict[str, str]:
    """The documents of ``rules``: rule id → JSON, and the presence intervals under
    :data:`PRESENCE_INTERVALS_KEY`."""
    docs = {r.id: json.dumps(rule_json(r), sort_keys=True) for r in rules.rules}
    if rules.presence_intervals:
        docs[PRESENCE_INTERVALS_KEY] = json.dumps(rules.presence_intervals, sort_keys=True)
    return docs


def from_documents(tenant: str, docs: dict[str, str]) -> RuleSet:
    """The rule set the documents hold (an invalid one is logged and left out)."""
    rules: list[Rule] = []
    intervals: dict[str, int] = {}
    for key, doc in sorted(docs.items()):
        try:
            if key == PRESENCE_INTERVALS_KEY:
                intervals = {str(k): int(v) for k, v in json.loads(doc).items()}
            else:
                rules.append(RULE_ADAPTER.validate_json(doc))
        except (ValidationError, ValueError, AttributeError) as err:
            log.error("tenant %s: stored rule %r is invalid and ignored: %s", tenant, key, err)
    return RuleSet(rules=tuple(rules), presence_intervals=intervals)
