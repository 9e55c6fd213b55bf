"""Batch operations and schedules as pydantic models, stored as JSON (no proto change).

A :class:`Selection` names the devices of a batch in exactly one way: an explicit list, a
filter over the registry (device type and/or token prefix) or a device group (resolved
through :class:`~fieldgate.cloud.services.batch.GroupMembers`). The selection is resolved
once, when the operation is created: the operation's elements are that snapshot, so a device
registered later is not added to a running batch.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    field_validator,
    model_validator,
)

from fieldgate.cloud.domain.commands import MAX_TTL_S
from fieldgate.cloud.jsontypes import integral, one_of_fields

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_TOKEN = re.compile(r"^[^\s/#+]{1,128}$")
MAX_DEVICES = 10_000
#: The last instant an ISO 8601 time can name (9999-12-31T23:59:59.999Z), in epoch ms.
MAX_TIME_MS = 253_402_300_799_999
#: An invocation's time-to-live in a request: whole seconds (cloud/jsontypes.py).
TtlS = Annotated[int, Field(ge=1, le=MAX_TTL_S), BeforeValidator(integral), Strict()]
TimeMs = Annotated[int, Field(ge=0, le=MAX_TIME_MS), BeforeValidator(integral), Strict()]


class DeviceFilter(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra=one_of_fields("device_type", "token_prefix", at_least=True),
    )

    device_type: str | None = Field(default=None, min_length=1, max_length=128)
    token_prefix: str | None = Field(default=None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _something(self) -> DeviceFilter:
        if self.device_type is None and self.token_prefix is None:
            raise ValueError("a filter needs device_type and/or token_prefix")
        return self


class Selection(BaseModel):
    """Exactly one of ``devices``, ``filter``, ``group``."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra=one_of_fields("devices", "filter", "group")
    )

    devices: list[Annotated[str, Field(pattern=_TOKEN.pattern)]] | None = Field(
        default=None, description="explicit device tokens", min_length=1, max_length=MAX_DEVICES
    )
    filter: DeviceFilter | None = Field(default=None, description="devices of the registry that match")
    group: str | None = Field(default=None, min_length=1, max_length=128, description="a device group")

    @field_validator("devices")
    @classmethod
    def _tokens(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("the device list is empty")
        bad = [t for t in value if not isinstance(t, str) or not _TOKEN.fullmatch(t)]
        if bad:
            raise ValueError(f"invalid device token {bad[0]!r}")
        return list(dict.fromkeys(value))  # de-duplicated, order kept

    @model_validator(mode="after")
    def _exactly_one(self) -> Selection:
        given = [n for n in ("devices", "filter", "group") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of devices, filter, group (got {given or 'none'})")
        return self


class OperationStatus(StrEnum):
    PENDING = "pending"  # created, elements not all invoked yet
    RUNNING = "running"  # every element invoked (or refused); waiting for their outcomes
    COMPLETED = "completed"  # every element reached a final status
    CANCELLED = "cancelled"


class ElementStatus(StrEnum):
    PENDING = "pending"  # not invoked yet
    QUEUED = "queued"  # invocation created; mirrored from the invocation store from here on
    DELIVERED = "delivered"
    ANSWERED = "answered"
    FAILED = "failed"  # the invocation failed, or CommandService refused it (reason says)
    EXPIRED = "expired"
    CANCELLED = "cancelled"  # cancelled before it was invoked


FINAL_ELEMENT = frozenset(
    {ElementStatus.ANSWERED, ElementStatus.FAILED, ElementStatus.EXPIRED, ElementStatus.CANCELLED}
)


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)
    ttl_s: TtlS | None = Field(
        default=None, description="each invocation's time-to-live (default: the cloud's)"
    )
    selection: Selection


class BatchOperation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    tenant: str
    command: str
    params: dict[str, Any]
    ttl_s: int | None = None
    selection: Selection
    status: OperationStatus = OperationStatus.PENDING
    initiator: str = ""
    schedule: str | None = Field(default=None, description="the schedule that started it, if any")
    total: int = 0
    created_ms: int
    updated_ms: int

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> BatchOperation:
        return cls.model_validate_json(text)


class BatchElement(BaseModel):
    operation: str
    device: str
    status: ElementStatus = ElementStatus.PENDING
    invocation: str | None = None
    reason: str = ""
    updated_ms: int = 0


# ------------------------------------------------------------------------------ schedules


class CommandAction(BaseModel):
    """Send one command to one device."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["command"]
    device: str = Field(min_length=1, max_length=128)
    command: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)
    ttl_s: TtlS | None = None


class BatchAction(BaseModel):
    """Start a batch operation (its selection resolved at each run)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["batch"]
    command: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)
    ttl_s: TtlS | None = None
    selection: Selection


class ScheduleIn(BaseModel):
    """``cron`` (five fields, UTC) or ``at_ms`` (one shot), and what to run."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=one_of_fields("cron", "at_ms"))

    id: str = Field(pattern=ID_PATTERN)
    cron: str | None = Field(default=None, max_length=200, description="e.g. '*/5 * * * *' (UTC)")
    at_ms: TimeMs | None = Field(default=None, description="one shot: when (ms since the epoch)")
    action: CommandAction | BatchAction = Field(discriminator="kind")
    enabled: StrictBool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from croniter import croniter

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(
                f"invalid cron expression {value!r} (five fields: minute hour day month weekday)"
            )
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleIn:
        if (self.cron is None) == (self.at_ms is None):
            raise ValueError("give exactly one of cron, at_ms")
        return self


class Schedule(ScheduleIn):
    tenant: str
    created_ms: int
    updated_ms: int
    initiator: str = ""
    last_due_ms: int | None = Field(default=None, description="the latest due time that ran")
    last_result: str = Field(default="", description="what the latest run did (an id, or why it failed)")

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        return cls.model_validate_json(text)


class ScheduleRun(BaseModel):
    schedule: str
    due_ms: int
    replica: str
    run_ms: int
    result: str = ""
