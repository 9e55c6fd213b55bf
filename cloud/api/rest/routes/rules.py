"""REST routes for a tenant's rules (docs/rules.md): ``/api/v1/rules`` CRUD and the
per-device-type presence intervals (``/api/v1/presence-intervals``).

Bodies are validated by the rule models (:mod:`fieldgate.cloud.domain.rules.model`): a bad
definition is a 422 whose ``detail`` names the field (e.g. ``body.threshold.operator``).
Reading needs ``read`` (not open to customer users: rules are tenant configuration),
changing needs ``write``.

No ``from __future__ import annotations`` here: see ``routes.registry``.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import BeforeValidator, Field, Strict

from fieldgate.cloud.api.rest.auth import AccessPolicy
from fieldgate.cloud.api.rest.models import error_docs
from fieldgate.cloud.api.rest.routes.registry import ERRORS
from fieldgate.cloud.domain.rules.model import (
    MAX_INTERVAL_S,
    MAX_PRESENCE_INTERVALS,
    RULE_ID_PATTERN,
    GeofenceRule,
    Rule,
    rule_json,
)
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.jsontypes import integral
from fieldgate.cloud.services.access import Permission, Principal, forbidden
from fieldgate.cloud.services.management import Management
from fieldgate.cloud.services.rules import RuleService

RuleId = Annotated[str, Path(pattern=RULE_ID_PATTERN)]
Intervals = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=128)],
        Annotated[int, Field(ge=1, le=MAX_INTERVAL_S), BeforeValidator(integral), Strict()],
    ],
    Field(max_length=MAX_PRESENCE_INTERVALS),
]


def checked(rule: Rule) -> Rule:
    """What the document adds to the rule model: a geofence's points are distinct."""
    if isinstance(rule, GeofenceRule) and len(set(rule.polygon)) != len(rule.polygon):
        raise InvalidRequest("geofence.polygon: a point is given twice (the last point joins the first)")
    return rule


def rules_router(rules: RuleService, policy: AccessPolicy, mgmt: Management) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERRORS, tags=["rules"])
    Read = Annotated[Principal, Depends(policy.require(Permission.READ))]
    Write = Annotated[Principal, Depends(policy.require(Permission.WRITE))]

    def tenant_reader(who: Principal) -> str:
        if who.scope_customer is not None:
            raise forbidden("rules are tenant configuration, not open to customer users")
        return who.tenant

    @router.get("/rules")
    async def list_rules(who: Read) -> dict[str, list[dict[str, Any]]]:
        """Every rule of the tenant (by id)."""
        rs = await rules.list(tenant_reader(who))
        return {"items": [rule_json(r) for r in sorted(rs.rules, key=lambda r: r.id)]}

    @router.post(
        "/rules",
        status_code=status.HTTP_201_CREATED,
        responses=error_docs(
            {409: "a rule with that id exists", 422: "invalid rule (the detail names the field)"}
        ),
    )
    async def create_rule(body: Rule, who: Write) -> dict[str, Any]:
        """Add a rule; it applies from the next event (and clock check) in every replica."""
        return rule_json(await rules.create(who.tenant, checked(body)))

    @router.get("/rules/{rule_id}", responses=error_docs({404: "no such rule"}))
    async def get_rule(rule_id: RuleId, who: Read) -> dict[str, Any]:
        return rule_json(await rules.get(tenant_reader(who), rule_id))

    @router.put("/rules/{rule_id}", responses=error_docs({422: "invalid rule, or the body's id differs"}))
    async def replace_rule(rule_id: RuleId, body: Rule, who: Write) -> dict[str, Any]:
        """Create or replace the rule ``rule_id`` (the body's ``id`` must be the same)."""
        if body.id != rule_id:
            raise InvalidRequest(f"id: {body.id!r} does not match the path's rule id {rule_id!r}")
        return rule_json(await rules.replace(who.tenant, checked(body)))

    @router.delete(
        "/rules/{rule_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=error_docs({404: "no such rule"}),
    )
    async def delete_rule(rule_id: RuleId, who: Write) -> Response:
        await rules.delete(who.tenant, rule_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get("/presence-intervals")
    async def get_presence_intervals(who: Read) -> Intervals:
        """Per-device-type presence intervals (seconds); other types use the tenant's
        ``presence_interval_s`` (300 by default)."""
        return dict((await rules.list(tenant_reader(who))).presence_intervals)

    @router.put(
        "/presence-intervals",
        responses=error_docs({422: "not whole seconds in 1 … 2592000, or a device type that does not exist"}),
    )
    async def set_presence_intervals(body: Intervals, who: Write) -> Intervals:
        """Replace the per-device-type presence intervals (whole seconds, 1 … 2592000) of
        existing device types (a type that does not exist: 422 naming it)."""
        await mgmt.check_device_types(who.tenant, sorted(body))
        return dict((await rules.set_presence_intervals(who.tenant, body)).presence_intervals)

    return router
