"""The gRPC ``TenantManagement`` service, an adapter over
:class:`~fieldgate.cloud.services.tenants.TenantAdmin` (the rules are there, as for the REST
routes). ``ApiAuth``'s method → permission map (cloud/services/access.py ``GRPC_METHODS``) makes
it an instance administrator's. A tenant's settings travel as JSON text (``settings_json``).
"""

from __future__ import annotations

from fieldgate.cloud.api.grpc.convert import Context, json_object, paging
from fieldgate.cloud.services.tenants import TenantAdmin
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc


class TenantManagementServicer(svc_grpc.TenantManagementServicer):
    def __init__(self, admin: TenantAdmin) -> None:
        self._admin = admin

    async def _with_settings(self, record: model.Tenant) -> model.Tenant:
        out = model.Tenant()
        out.CopyFrom(record)
        out.settings_json = (await self._admin.settings(record)).model_dump_json()
        return out

    async def CreateTenant(self, request: svc.CreateTenantRequest, context: Context) -> model.Tenant:
        created = await self._admin.create(request.token, json_object(request.settings_json, "settings_json"))
        return await self._with_settings(created)

    async def GetTenant(self, request: svc.GetTenantRequest, context: Context) -> model.Tenant:
        return await self._with_settings(await self._admin.get(request.token))

    async def ListTenants(self, request: svc.ListTenantsRequest, context: Context) -> svc.ListTenantsResponse:
        p = await self._admin.page(*paging(request.page))
        return svc.ListTenantsResponse(tenants=[await self._with_settings(t) for t in p.items], total=p.total)

    async def UpdateTenant(self, request: svc.UpdateTenantRequest, context: Context) -> model.Tenant:
        updated = await self._admin.update(request.token, json_object(request.settings_json, "settings_json"))
        return await self._with_settings(updated)

    async def DeleteTenant(
        self, request: svc.DeleteTenantRequest, context: Context
    ) -> svc.DeleteTenantResponse:
        removed = await self._admin.delete(request.token, request.confirm or None)
        return svc.DeleteTenantResponse(token=request.token, removed=removed)
