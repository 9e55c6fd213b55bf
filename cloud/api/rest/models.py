"""REST request and response shapes, and their conversion to and from the protobuf model.

Request models are strict and closed (``extra="forbid"``, no type coercion): a misspelt field
or a string where a number belongs is a 422 naming the field, not a silently different request.
Responses render times as ISO 8601 (with the epoch-ms value alongside where clients filter on
it) and JSON-encoded protobuf fields (command params, responses) as real JSON values.
"""

import json
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, StringConstraints

from fieldgate.cloud.domain.commands import MAX_TTL_S
from fieldgate.cloud.domain.users import (
    CUSTOMER_PATTERN,
    MAX_PASSWORD,
    MIN_PASSWORD,
    TENANT_PATTERN,
    USER_PATTERN,
    UserRecord,
)
from fieldgate.cloud.jsontypes import integral
from fieldgate.cloud.services.documents import iso
from fieldgate.cloud.services.management import NAME_PATTERN, TOKEN_PATTERN
from fieldgate.cloud.store import Page
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc

ParamTypeName = Literal["string", "int", "float", "bool"]
EventKind = Literal[
    "measurement", "location", "alert", "command_invocation", "command_response", "state_change"
]
InvocationStatus = Literal["unspecified", "queued", "delivered", "answered", "failed", "expired", "late"]
AssignmentStatusName = Literal["unspecified", "active", "missing", "released"]

_PARAM_TYPES: dict[str, model.ParamType.ValueType] = {
    "string": model.PARAM_TYPE_STRING,
    "int": model.PARAM_TYPE_INT,
    "float": model.PARAM_TYPE_FLOAT,
    "bool": model.PARAM_TYPE_BOOL,
}
_PARAM_NAMES: dict[int, ParamTypeName] = {v: k for k, v in _PARAM_TYPES.items()}  # type: ignore[misc]

MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]
MetaValue = Annotated[str, StringConstraints(max_length=4096)]
Metadata = Annotated[dict[MetaKey, MetaValue], Field(max_length=100)]
ParamKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _json_value(text: str) -> Any:
    """A JSON-encoded field as its value (the raw text if it somehow is not JSON)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- errors -----------------------------------------------------------------------------------


class ErrorItem(BaseModel):
    loc: str
    msg: str


class ReferenceOut(BaseModel):
    kind: str = Field(description="what was named, e.g. 'device type'")
    token: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer: ``detail`` is one readable message; validation errors also list
    each problem under ``errors``; a request naming something that does not exist (a device's
    type, an assignment's customer, ...) is a 422 that says which under ``reference``."""

    detail: str
    errors: list[ErrorItem] | None = None
    reference: ReferenceOut | None = None


_COMMON_ERRORS = {
    401: "missing, invalid or expired bearer token",
    403: "the token's role may not do this, or it asked for a tenant it may not act for",
    404: "not found (also: the tenant named by X-Fieldgate-Tenant does not exist)",
    422: "invalid request: the detail names the field and the reason (``reference``: an entity the "
    "request names that does not exist)",
}


def error_docs(
    extra: dict[int, str] | None = None, *, common: bool = False
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting error answers as :class:`ErrorOut`."""
    codes = (_COMMON_ERRORS if common else {}) | (extra or {})
    return {code: {"model": ErrorOut, "description": text} for code, text in codes.items()}


# --- device types -----------------------------------------------------------------------------


class ParamIn(_In):
    name: str = Field(max_length=64, pattern=NAME_PATTERN)
    type: ParamTypeName
    required: bool = False


class CommandIn(_In):
    name: str = Field(max_length=64, pattern=NAME_PATTERN)
    description: str = Field("", max_length=2000)
    params: list[ParamIn] = Field(default_factory=list, max_length=64)


class DeviceTypeChange(_In):
    """A device type's name, description and commands (PUT replaces them all)."""

    name: str = Field("", max_length=200)
    description: str = Field("", max_length=2000)
    commands: list[CommandIn] = Field(default_factory=list, max_length=256)

    def to_pb(self, token: str) -> model.DeviceType:
        return model.DeviceType(
            token=token,
            name=self.name,
            description=self.description,
            commands=[
                model.DeviceCommand(
                    name=c.name,
                    description=c.description,
                    params=[
                        model.CommandParam(name=p.name, type=_PARAM_TYPES[p.type], required=p.required)
                        for p in c.params
                    ],
                )
                for c in self.commands
            ],
        )


class DeviceTypeIn(DeviceTypeChange):
    token: str = Field(max_length=128, pattern=TOKEN_PATTERN)


class ParamOut(BaseModel):
    name: str
    type: ParamTypeName | Literal["unspecified"]
    required: bool


class CommandOut(BaseModel):
    name: str
    description: str
    params: list[ParamOut]


class DeviceTypeOut(BaseModel):
    token: str
    name: str
    description: str
    commands: list[CommandOut]

    @classmethod
    def from_pb(cls, dt: model.DeviceType) -> "DeviceTypeOut":
        return cls(
            token=dt.token,
            name=dt.name,
            description=dt.description,
            commands=[
                CommandOut(
                    name=c.name,
                    description=c.description,
                    params=[
                        ParamOut(
                            name=p.name, type=_PARAM_NAMES.get(p.type, "unspecified"), required=p.required
                        )
                        for p in c.params
                    ],
                )
                for c in dt.commands
            ],
        )


# --- devices ----------------------------------------------------------------------------------


class DeviceChange(_In):
    """A device's type, comments and metadata (PUT replaces them all)."""

    device_type: str = Field(min_length=1, max_length=128)
    comments: str = Field("", max_length=2000)
    metadata: Metadata = Field(default_factory=dict)

    def to_pb(self, token: str) -> model.Device:
        return model.Device(
            token=token, device_type=self.device_type, comments=self.comments, metadata=self.metadata
        )


class DeviceIn(DeviceChange):
    token: str = Field(max_length=128, pattern=TOKEN_PATTERN)


class DeviceOut(BaseModel):
    token: str
    device_type: str
    comments: str
    metadata: dict[str, str]
    created: str

    @classmethod
    def from_pb(cls, d: model.Device) -> "DeviceOut":
        return cls(
            token=d.token,
            device_type=d.device_type,
            comments=d.comments,
            metadata=dict(d.metadata),
            created=iso(d.created_ms),
        )


# --- assignments ------------------------------------------------------------------------------


class AssignmentIn(_In):
    device: str = Field(min_length=1, max_length=128)
    customer: str = Field("", max_length=128)
    area: str = Field("", max_length=128)
    asset: str = Field("", max_length=128)
    metadata: Metadata = Field(default_factory=dict)

    def to_pb(self) -> model.Assignment:
        return model.Assignment(
            device=self.device,
            customer=self.customer,
            area=self.area,
            asset=self.asset,
            metadata=self.metadata,
        )


class AssignmentOut(BaseModel):
    token: str
    device: str
    customer: str
    area: str
    asset: str
    status: AssignmentStatusName
    active: str
    released: str | None
    metadata: dict[str, str]

    @classmethod
    def from_pb(cls, a: model.Assignment) -> "AssignmentOut":
        status: AssignmentStatusName = {  # type: ignore[assignment]
            model.ASSIGNMENT_STATUS_ACTIVE: "active",
            model.ASSIGNMENT_STATUS_MISSING: "missing",
            model.ASSIGNMENT_STATUS_RELEASED: "released",
        }.get(a.status, "unspecified")
        return cls(
            token=a.token,
            device=a.device,
            customer=a.customer,
            area=a.area,
            asset=a.asset,
            status=status,
            active=iso(a.active_ms),
            released=iso(a.released_ms) or None,
            metadata=dict(a.metadata),
        )


# --- commands and invocations -----------------------------------------------------------------


class CommandRequest(_In):
    command: str = Field(min_length=1, max_length=64)
    params: dict[ParamKey, Any] = Field(default_factory=dict, max_length=64)
    ttl_s: Annotated[int, Field(ge=1, le=MAX_TTL_S), BeforeValidator(integral), Strict()] | None = Field(
        None, description="time-to-live; default from configuration"
    )


_STATUS_NAMES: dict[int, InvocationStatus] = {
    svc.COMMAND_STATUS_QUEUED: "queued",
    svc.COMMAND_STATUS_DELIVERED: "delivered",
    svc.COMMAND_STATUS_ANSWERED: "answered",
    svc.COMMAND_STATUS_FAILED: "failed",
    svc.COMMAND_STATUS_EXPIRED: "expired",
    svc.COMMAND_STATUS_LATE: "late",
}


class InvocationOut(BaseModel):
    id: str
    device: str
    command: str
    params: Any
    status: InvocationStatus = Field(
        description="queued → delivered → answered, or failed / expired; late: answered by the "
        "device after it had failed or expired (reason still says why)"
    )
    reason: str = Field(description="why it failed or expired (kept when it is late), else empty")
    response: Any = Field(description="the device's answer (a JSON value) once answered or late, else null")
    created: str
    updated: str
    expires: str

    @classmethod
    def from_pb(cls, s: svc.InvocationState) -> "InvocationOut":
        return cls(
            id=s.id,
            device=s.device,
            command=s.command,
            params=_json_value(s.params_json) or {},
            status=_STATUS_NAMES.get(s.status, "unspecified"),
            reason=s.reason,
            response=_json_value(s.response_json),
            created=iso(s.created_ms),
            updated=iso(s.updated_ms),
            expires=iso(s.expires_ms),
        )


# --- events -----------------------------------------------------------------------------------


class _EventBase(BaseModel):
    id: str
    alternate_id: str
    device: str
    assignment: str
    event_time: str
    event_time_ms: int
    received_time: str
    received_time_ms: int
    metadata: dict[str, str]


class MeasurementOut(_EventBase):
    type: Literal["measurement"] = "measurement"
    values: dict[str, float]


class LocationOut(_EventBase):
    type: Literal["location"] = "location"
    lat: float
    lon: float
    ele: float


class AlertOut(_EventBase):
    type: Literal["alert"] = "alert"
    alert_type: str
    level: Literal["unspecified", "info", "warning", "error", "critical"]
    message: str
    source: Literal["unspecified", "device", "system"]


class CommandInvocationOut(_EventBase):
    type: Literal["command_invocation"] = "command_invocation"
    invocation: str
    command: str
    params: Any
    initiator: str
    expires: str


class CommandResponseOut(_EventBase):
    type: Literal["command_response"] = "command_response"
    invocation: str
    response: Any
    refused: str | None = Field(
        None,
        description="why the cloud did not link this response to the invocation (an unknown "
        "invocation, or one for another device); null when it is linked",
    )


class StateChangeOut(_EventBase):
    type: Literal["state_change"] = "state_change"
    kind: Literal["unspecified", "registration", "assignment", "presence"]
    previous: str
    current: str


EventOut = Annotated[
    MeasurementOut | LocationOut | AlertOut | CommandInvocationOut | CommandResponseOut | StateChangeOut,
    Field(discriminator="type"),
]

_LEVELS: dict[int, Any] = {
    pb.ALERT_LEVEL_INFO: "info",
    pb.ALERT_LEVEL_WARNING: "warning",
    pb.ALERT_LEVEL_ERROR: "error",
    pb.ALERT_LEVEL_CRITICAL: "critical",
}
_SOURCES: dict[int, Any] = {pb.ALERT_SOURCE_DEVICE: "device", pb.ALERT_SOURCE_SYSTEM: "system"}
_KINDS: dict[int, Any] = {
    pb.STATE_CHANGE_KIND_REGISTRATION: "registration",
    pb.STATE_CHANGE_KIND_ASSIGNMENT: "assignment",
    pb.STATE_CHANGE_KIND_PRESENCE: "presence",
}


def event_out(e: pb.Event) -> EventOut | None:
    """The REST shape of an event; None for an event without a payload (nothing to show)."""
    base: dict[str, Any] = {
        "id": e.id,
        "alternate_id": e.alternate_id,
        "device": e.device,
        "assignment": e.assignment,
        "event_time": iso(e.event_time_ms),
        "event_time_ms": e.event_time_ms,
        "received_time": iso(e.received_time_ms),
        "received_time_ms": e.received_time_ms,
        "metadata": dict(e.metadata),
    }
    kind = e.WhichOneof("payload")
    if kind == "measurement":
        return MeasurementOut(**base, values=dict(e.measurement.values))
    if kind == "location":
        loc = e.location
        return LocationOut(**base, lat=loc.latitude, lon=loc.longitude, ele=loc.elevation)
    if kind == "alert":
        a = e.alert
        return AlertOut(
            **base,
            alert_type=a.alert_type,
            level=_LEVELS.get(a.level, "unspecified"),
            message=a.message,
            source=_SOURCES.get(a.source, "unspecified"),
        )
    if kind == "command_invocation":
        ci = e.command_invocation
        return CommandInvocationOut(
            **base,
            invocation=ci.invocation,
            command=ci.command,
            params=_json_value(ci.params_json) or {},
            initiator=ci.initiator,
            expires=iso(ci.expires_ms),
        )
    if kind == "command_response":
        cr = e.command_response
        return CommandResponseOut(
            **base,
            invocation=cr.invocation,
            response=_json_value(cr.response_json),
            refused=cr.refused or None,
        )
    if kind == "state_change":
        sc = e.state_change
        return StateChangeOut(
            **base, kind=_KINDS.get(sc.kind, "unspecified"), previous=sc.previous, current=sc.current
        )
    return None


# --- users ------------------------------------------------------------------------------------

RoleName = Literal["instance-admin", "tenant-admin", "operator", "viewer", "customer"]
UserName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=USER_PATTERN.pattern)]
Password = Annotated[str, StringConstraints(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)]
Customer = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=CUSTOMER_PATTERN.pattern)]


# A customer user names its customer; no other user does (the document says so).
_CUSTOMER_ROLE: dict[str, Any] = {
    "oneOf": [
        {
            "properties": {"role": {"const": "customer"}, "customer": {"not": {"type": "null"}}},
            "required": ["customer"],
        },
        {"properties": {"role": {"not": {"const": "customer"}}, "customer": {"type": "null"}}},
    ]
}


class UserIn(_In):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_CUSTOMER_ROLE)

    name: UserName
    password: Password
    role: RoleName
    tenant: str | None = Field(
        None, max_length=63, pattern=TENANT_PATTERN.pattern, description="default: the caller's tenant"
    )
    customer: Customer | None = Field(None, description="required for (and only for) role customer")


class UserPatch(_In):
    password: Password | None = None
    role: RoleName | None = None
    customer: Customer | None = Field(None, description="with role customer (or for a customer user)")


class UserOut(BaseModel):
    name: str
    tenant: str
    role: RoleName
    customer: str | None

    @classmethod
    def from_record(cls, u: UserRecord) -> "UserOut":
        return cls(name=u.name, tenant=u.tenant, role=u.role.value, customer=u.customer)


# --- pages ------------------------------------------------------------------------------------

T = TypeVar("T")


class PageOut(BaseModel, Generic[T]):
    items: list[T]
    page: int
    page_size: int
    total: int


def page_fields(page: Page[Any]) -> dict[str, int]:
    """The paging fields of a :class:`PageOut` from a store's page."""
    return {"page": page.page, "page_size": page.page_size, "total": page.total}
