"""The gRPC ``SiteManagement`` service: an adapter over the site store and
:class:`~fieldgate.cloud.services.site.SiteService`, which the REST routes use too
(cloud/api/rest/routes/site.py), so the same things are refused with the same messages.

Site records travel as the site store's JSON documents (the pydantic records of
cloud/store/site.py), not as one protobuf message per kind: the store keeps them as JSON and a
new field of a record then needs no proto change. A document that does not validate is
INVALID_ARGUMENT naming the field. These are tenant-wide reads: customer users are refused by
``ApiAuth`` already.
"""

from __future__ import annotations

from pydantic import ValidationError

from fieldgate.cloud.api.grpc.convert import Context, TenantCheck, paging, validation_errors
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.services.site import SiteService
from fieldgate.cloud.store.site import KINDS, RECORD_TYPES, GroupElement, Kind, SiteRecord, SiteStore
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise InvalidRequest(f"kind {kind[:40]!r} is unknown; one of {', '.join(KINDS)}")
    return kind


def _record(kind: Kind, document: str) -> SiteRecord:
    try:
        return RECORD_TYPES[kind].model_validate_json(document or "{}")
    except ValidationError as err:
        raise InvalidRequest(f"invalid {kind}: {validation_errors(err)}") from err


def _reply(record: SiteRecord) -> svc.SiteRecordReply:
    return svc.SiteRecordReply(kind=record.KIND, token=record.token, json=record.model_dump_json())


def _element(el: GroupElement) -> svc.GroupElementReply:
    return svc.GroupElementReply(element_kind=el.kind, token=el.token, roles=list(el.roles))


class SiteManagementServicer(svc_grpc.SiteManagementServicer):
    def __init__(self, site: SiteStore, service: SiteService, tenant: TenantCheck) -> None:
        self._site = site
        self._service = service
        self._tenant = tenant

    async def CreateSiteRecord(self, request: svc.SiteRecordRequest, context: Context) -> svc.SiteRecordReply:
        tenant = await self._tenant(request.tenant)
        return _reply(await self._site.create(tenant, _record(_kind(request.kind), request.json)))

    async def GetSiteRecord(self, request: svc.SiteRecordKey, context: Context) -> svc.SiteRecordReply:
        tenant = await self._tenant(request.tenant)
        return _reply(await self._service.get(tenant, _kind(request.kind), request.token))

    async def ListSiteRecords(
        self, request: svc.ListSiteRecordsRequest, context: Context
    ) -> svc.ListSiteRecordsResponse:
        tenant = await self._tenant(request.tenant)
        ref: tuple[Kind, str] | None = None
        if request.referencing:
            ref = (_kind(request.referencing_kind), request.referencing)
        page, page_size = paging(request.page)
        p = await self._site.find(
            tenant, _kind(request.kind), page, page_size, search=request.search or None, referencing=ref
        )
        return svc.ListSiteRecordsResponse(records=[_reply(r) for r in p.items], total=p.total)

    async def UpdateSiteRecord(self, request: svc.SiteRecordRequest, context: Context) -> svc.SiteRecordReply:
        tenant = await self._tenant(request.tenant)
        return _reply(await self._site.update(tenant, _record(_kind(request.kind), request.json)))

    async def DeleteSiteRecord(self, request: svc.SiteRecordKey, context: Context) -> svc.DeleteResponse:
        tenant = await self._tenant(request.tenant)
        await self._site.delete(tenant, _kind(request.kind), request.token)
        return svc.DeleteResponse(token=request.token)

    async def PutGroupElement(
        self, request: svc.GroupElementRequest, context: Context
    ) -> svc.GroupElementReply:
        tenant = await self._tenant(request.tenant)
        try:
            el = GroupElement(
                kind=request.element_kind,  # validated here
                token=request.token,
                roles=tuple(request.roles),
            )
        except ValidationError as err:
            raise InvalidRequest(f"invalid group element: {validation_errors(err)}") from err
        return _element(await self._service.put_element(tenant, request.group, el))

    async def RemoveGroupElement(
        self, request: svc.GroupElementRequest, context: Context
    ) -> svc.DeleteResponse:
        tenant = await self._tenant(request.tenant)
        await self._site.remove_element(tenant, request.group, request.element_kind, request.token)
        return svc.DeleteResponse(token=request.token)

    async def ListGroupElements(
        self, request: svc.ListGroupElementsRequest, context: Context
    ) -> svc.ListGroupElementsResponse:
        tenant = await self._tenant(request.tenant)
        p = await self._site.elements(tenant, request.group, *paging(request.page))
        return svc.ListGroupElementsResponse(elements=[_element(e) for e in p.items], total=p.total)

    async def ListGroupDevices(
        self, request: svc.ListGroupDevicesRequest, context: Context
    ) -> svc.ListGroupDevicesResponse:
        tenant = await self._tenant(request.tenant)
        devices = await self._site.members(tenant, request.group, recursive=not request.direct_only)
        return svc.ListGroupDevicesResponse(devices=devices)
