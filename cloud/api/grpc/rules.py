"""The gRPC ``Rules`` service: a tenant's rules, an adapter over
:class:`~fieldgate.cloud.services.rules.RuleService` (as the REST routes,
cloud/api/rest/routes/rules.py). A rule travels as the REST API's rule document (JSON text); one
that does not validate is INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from fieldgate.cloud.api.grpc.convert import Context, TenantCheck, validation_errors
from fieldgate.cloud.domain.rules.model import RULE_ADAPTER, Rule, rule_json
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.services.rules import RuleService
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc


def _rule(document: str) -> Rule:
    try:
        return RULE_ADAPTER.validate_json(document or "{}")
    except ValidationError as err:
        raise InvalidRequest(f"invalid rule: {validation_errors(err)}") from err


def _rule_reply(rule: Rule) -> svc.RuleReply:
    return svc.RuleReply(id=rule.id, json=json.dumps(rule_json(rule), separators=(",", ":")))


class RulesServicer(svc_grpc.RulesServicer):
    def __init__(self, rules: RuleService, tenant: TenantCheck) -> None:
        self._rules = rules
        self._tenant = tenant

    async def ListRules(self, request: svc.ListRulesRequest, context: Context) -> svc.ListRulesResponse:
        rs = await self._rules.list(await self._tenant(request.tenant))
        return svc.ListRulesResponse(rules=[_rule_reply(r) for r in sorted(rs.rules, key=lambda r: r.id)])

    async def GetRule(self, request: svc.RuleKey, context: Context) -> svc.RuleReply:
        return _rule_reply(await self._rules.get(await self._tenant(request.tenant), request.id))

    async def CreateRule(self, request: svc.RuleRequest, context: Context) -> svc.RuleReply:
        tenant = await self._tenant(request.tenant)
        return _rule_reply(await self._rules.create(tenant, _rule(request.json)))

    async def ReplaceRule(self, request: svc.RuleRequest, context: Context) -> svc.RuleReply:
        tenant = await self._tenant(request.tenant)
        return _rule_reply(await self._rules.replace(tenant, _rule(request.json)))

    async def DeleteRule(self, request: svc.RuleKey, context: Context) -> svc.DeleteResponse:
        await self._rules.delete(await self._tenant(request.tenant), request.id)
        return svc.DeleteResponse(token=request.id)
