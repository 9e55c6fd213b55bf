"""The gRPC ``SiteManagement``, ``DeviceStates`` and ``Rules`` services: adapters over the stores
and services the REST routes use (cloud/api/rest/routes/site.py, state.py, rules.py), so the same
things are refused with the same messages. ``add_grpc_api`` (cloud/api/grpc/server.py) registers
them behind its ``ApiAuth``.

Site records travel as the site store's JSON documents (the pydantic records of
cloud/store/site.py), not as one protobuf message per kind: the store keeps them as JSON and a
new field of a record then needs no proto change. A document that does not validate is
INVALID_ARGUMENT naming the field. Device state travels as the REST API's ``DeviceState``
document, a rule as the REST API's rule document. These are tenant-wide reads: customer users are refused by ``ApiAuth`` already.
"""

from __future__ import annotations

import json
from typing import Any, cast

from pydantic import ValidationError

# TODO(issue 16 phase B): the device state document moves to services/documents.py (no gRPC module
# imports api.rest).
from fieldgate.cloud.api.rest.routes.state import DeviceStateOut
from fieldgate.cloud.domain.rules.model import RULE_ADAPTER, Rule, rule_json
from fieldgate.cloud.errors import InvalidRequest, NotFound
from fieldgate.cloud.services.management import DEFAULT_PAGE_SIZE, Management, check_page
from fieldgate.cloud.services.rules import RuleService
from fieldgate.cloud.store.site import KINDS, RECORD_TYPES, GroupElement, Kind, SiteRecord, SiteStore
from fieldgate.cloud.store.state import DeviceStateStore, Presence
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc

Context = Any
TenantCheck = Any  # server._TenantCheck (an awaitable check of the request's tenant)


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise InvalidRequest(f"kind {kind[:40]!r} is unknown; one of {', '.join(KINDS)}")
    return kind


def _errors(err: ValidationError) -> str:
    parts = [f"{'.'.join(str(x) for x in e['loc']) or 'json'}: {e['msg']}" for e in err.errors()[:5]]
    return "; ".join(parts)


def _record(kind: Kind, document: str) -> SiteRecord:
    try:
        return RECORD_TYPES[kind].model_validate_json(document or "{}")
    except ValidationError as err:
        raise InvalidRequest(f"invalid {kind}: {_errors(err)}") from err


def _reply(record: SiteRecord) -> svc.SiteRecordReply:
    return svc.SiteRecordReply(kind=record.KIND, token=record.token, json=record.model_dump_json())


def _paging(page: svc.PageRequest) -> tuple[int, int]:
    return (page.page or 1, page.page_size or DEFAULT_PAGE_SIZE)


def _element(el: GroupElement) -> svc.GroupElementReply:
    return svc.GroupElementReply(element_kind=el.kind, token=el.token, roles=list(el.roles))


class SiteManagementServicer(svc_grpc.SiteManagementServicer):
    def __init__(self, site: SiteStore, mgmt: Management, tenant: TenantCheck, guarded: Any) -> None:
        self._site = site
        self._mgmt = mgmt
        self._tenant = tenant
        self._guarded = guarded

    async def CreateSiteRecord(self, request: svc.SiteRecordRequest, context: Context) -> svc.SiteRecordReply:
        async def run() -> svc.SiteRecordReply:
            tenant = await self._tenant(request.tenant)
            record = _record(_kind(request.kind), request.json)
            return _reply(await self._site.create(tenant, record))

        return cast(svc.SiteRecordReply, await self._guarded(context, run()))

    async def GetSiteRecord(self, request: svc.SiteRecordKey, context: Context) -> svc.SiteRecordReply:
        async def run() -> svc.SiteRecordReply:
            tenant = await self._tenant(request.tenant)
            kind = _kind(request.kind)
            record = await self._site.get(tenant, kind, request.token)
            if record is None:
                raise NotFound(f"{kind.replace('_', ' ')} '{request.token[:140]}' does not exist")
            return _reply(record)

        return cast(svc.SiteRecordReply, await self._guarded(context, run()))

    async def ListSiteRecords(
        self, request: svc.ListSiteRecordsRequest, context: Context
    ) -> svc.ListSiteRecordsResponse:
        async def run() -> svc.ListSiteRecordsResponse:
            tenant = await self._tenant(request.tenant)
            ref: tuple[Kind, str] | None = None
            if request.referencing:
                ref = (_kind(request.referencing_kind), request.referencing)
            page, page_size = _paging(request.page)
            p = await self._site.find(
                tenant, _kind(request.kind), page, page_size, search=request.search or None, referencing=ref
            )
            return svc.ListSiteRecordsResponse(records=[_reply(r) for r in p.items], total=p.total)

        return cast(svc.ListSiteRecordsResponse, await self._guarded(context, run()))

    async def UpdateSiteRecord(self, request: svc.SiteRecordRequest, context: Context) -> svc.SiteRecordReply:
        async def run() -> svc.SiteRecordReply:
            tenant = await self._tenant(request.tenant)
            record = _record(_kind(request.kind), request.json)
            return _reply(await self._site.update(tenant, record))

        return cast(svc.SiteRecordReply, await self._guarded(context, run()))

    async def DeleteSiteRecord(self, request: svc.SiteRecordKey, context: Context) -> svc.DeleteResponse:
        async def run() -> svc.DeleteResponse:
            tenant = await self._tenant(request.tenant)
            await self._site.delete(tenant, _kind(request.kind), request.token)
            return svc.DeleteResponse(token=request.token)

        return cast(svc.DeleteResponse, await self._guarded(context, run()))

    async def PutGroupElement(
        self, request: svc.GroupElementRequest, context: Context
    ) -> svc.GroupElementReply:
        async def run() -> svc.GroupElementReply:
            tenant = await self._tenant(request.tenant)
            try:
                el = GroupElement(
                    kind=request.element_kind,  # type: ignore[arg-type]  # validated here
                    token=request.token,
                    roles=tuple(request.roles),
                )
            except ValidationError as err:
                raise InvalidRequest(f"invalid group element: {_errors(err)}") from err
            if await self._site.get(tenant, "device_group", request.group) is None:
                raise NotFound(f"device group '{request.group[:140]}' does not exist")
            if el.kind == "device":
                await self._mgmt.check_devices(tenant, [el.token])
            return _element(await self._site.put_element(tenant, request.group, el))

        return cast(svc.GroupElementReply, await self._guarded(context, run()))

    async def RemoveGroupElement(
        self, request: svc.GroupElementRequest, context: Context
    ) -> svc.DeleteResponse:
        async def run() -> svc.DeleteResponse:
            tenant = await self._tenant(request.tenant)
            await self._site.remove_element(tenant, request.group, request.element_kind, request.token)
            return svc.DeleteResponse(token=request.token)

        return cast(svc.DeleteResponse, await self._guarded(context, run()))

    async def ListGroupElements(
        self, request: svc.ListGroupElementsRequest, context: Context
    ) -> svc.ListGroupElementsResponse:
        async def run() -> svc.ListGroupElementsResponse:
            tenant = await self._tenant(request.tenant)
            p = await self._site.elements(tenant, request.group, *_paging(request.page))
            return svc.ListGroupElementsResponse(elements=[_element(e) for e in p.items], total=p.total)

        return cast(svc.ListGroupElementsResponse, await self._guarded(context, run()))

    async def ListGroupDevices(
        self, request: svc.ListGroupDevicesRequest, context: Context
    ) -> svc.ListGroupDevicesResponse:
        async def run() -> svc.ListGroupDevicesResponse:
            tenant = await self._tenant(request.tenant)
            devices = await self._site.members(tenant, request.group, recursive=not request.direct_only)
            return svc.ListGroupDevicesResponse(devices=devices)

        return cast(svc.ListGroupDevicesResponse, await self._guarded(context, run()))


def _state_reply(out: DeviceStateOut) -> svc.DeviceStateReply:
    return svc.DeviceStateReply(device=out.device, presence=out.presence, state_json=out.model_dump_json())


class DeviceStatesServicer(svc_grpc.DeviceStatesServicer):
    def __init__(self, states: DeviceStateStore, mgmt: Management, tenant: TenantCheck, guarded: Any) -> None:
        self._states = states
        self._mgmt = mgmt
        self._tenant = tenant
        self._guarded = guarded

    async def GetDeviceState(
        self, request: svc.GetDeviceStateRequest, context: Context
    ) -> svc.DeviceStateReply:
        async def run() -> svc.DeviceStateReply:
            tenant = await self._tenant(request.tenant)
            await self._mgmt.get_device(tenant, request.device)
            found = (await self._states.get_states(tenant, [request.device])).get(request.device)
            if found is None:
                raise NotFound(
                    f"device {request.device!r} has no state yet (no event of it reached the state stage)"
                )
            return _state_reply(DeviceStateOut.of(found))

        return cast(svc.DeviceStateReply, await self._guarded(context, run()))

    async def ListDeviceStates(
        self, request: svc.ListDeviceStatesRequest, context: Context
    ) -> svc.ListDeviceStatesResponse:
        async def run() -> svc.ListDeviceStatesResponse:
            tenant = await self._tenant(request.tenant)
            if request.presence not in ("", "present", "missing"):
                raise InvalidRequest(f"presence {request.presence[:40]!r} is not present, missing or empty")
            page, page_size = _paging(request.page)
            check_page(page, page_size)
            p = await self._states.list_states(
                tenant,
                presence=cast(Presence, request.presence) if request.presence else None,
                page=page,
                page_size=page_size,
            )
            return svc.ListDeviceStatesResponse(
                states=[_state_reply(DeviceStateOut.of(s)) for s in p.items], total=p.total
            )

        return cast(svc.ListDeviceStatesResponse, await self._guarded(context, run()))


def _rule(document: str) -> Rule:
    try:
        return RULE_ADAPTER.validate_json(document or "{}")
    except ValidationError as err:
        raise InvalidRequest(f"invalid rule: {_errors(err)}") from err


def _rule_reply(rule: Rule) -> svc.RuleReply:
    return svc.RuleReply(id=rule.id, json=json.dumps(rule_json(rule), separators=(",", ":")))


class RulesServicer(svc_grpc.RulesServicer):
    def __init__(self, rules: RuleService, tenant: TenantCheck, guarded: Any) -> None:
        self._rules = rules
        self._tenant = tenant
        self._guarded = guarded

    async def ListRules(self, request: svc.ListRulesRequest, context: Context) -> svc.ListRulesResponse:
        async def run() -> svc.ListRulesResponse:
            rs = await self._rules.list(await self._tenant(request.tenant))
            return svc.ListRulesResponse(rules=[_rule_reply(r) for r in sorted(rs.rules, key=lambda r: r.id)])

        return cast(svc.ListRulesResponse, await self._guarded(context, run()))

    async def GetRule(self, request: svc.RuleKey, context: Context) -> svc.RuleReply:
        async def run() -> svc.RuleReply:
            return _rule_reply(await self._rules.get(await self._tenant(request.tenant), request.id))

        return cast(svc.RuleReply, await self._guarded(context, run()))

    async def CreateRule(self, request: svc.RuleRequest, context: Context) -> svc.RuleReply:
        async def run() -> svc.RuleReply:
            tenant = await self._tenant(request.tenant)
            return _rule_reply(await self._rules.create(tenant, _rule(request.json)))

        return cast(svc.RuleReply, await self._guarded(context, run()))

    async def ReplaceRule(self, request: svc.RuleRequest, context: Context) -> svc.RuleReply:
        async def run() -> svc.RuleReply:
            tenant = await self._tenant(request.tenant)
            return _rule_reply(await self._rules.replace(tenant, _rule(request.json)))

        return cast(svc.RuleReply, await self._guarded(context, run()))

    async def DeleteRule(self, request: svc.RuleKey, context: Context) -> svc.DeleteResponse:
        async def run() -> svc.DeleteResponse:
            await self._rules.delete(await self._tenant(request.tenant), request.id)
            return svc.DeleteResponse(token=request.id)

        return cast(svc.DeleteResponse, await self._guarded(context, run()))
