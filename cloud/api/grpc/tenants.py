"""The gRPC ``TenantManagement`` and ``CustomerManagement`` services (adapters, like the REST
routes: the rules are in :class:`~fieldgate.cloud.services.tenants.TenantAdmin` and
:class:`~fieldgate.cloud.services.customers.CustomerManagement`). ``add_grpc_api``
(cloud/api/grpc/server.py) registers them behind :class:`~fieldgate.cloud.api.grpc.server.ApiAuth`, whose
method → permission map (cloud/services/access.py ``GRPC_METHODS``) makes TenantManagement an
instance administrator's and the customer methods READ or WRITE of the request's tenant.
InUse (a customer with children or an active assignment) is FAILED_PRECONDITION.
"""

from __future__ import annotations

import json
from typing import Any

# TODO(issue 16 phase B): these shared helpers move to api/grpc/convert.py (server.py imports this
# module inside a function: a cycle).
from fieldgate.cloud.api.grpc.server import Context, _guarded, _paging, _TenantCheck
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.services.customers import CustomerManagement
from fieldgate.cloud.services.tenants import TenantAdmin
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc


def _settings(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        obj = json.loads(text)
    except ValueError as err:
        raise InvalidRequest(f"settings_json is not JSON: {err}") from err
    if not isinstance(obj, dict):
        raise InvalidRequest("settings_json must encode a JSON object")
    return obj


class TenantManagementServicer(svc_grpc.TenantManagementServicer):
    def __init__(self, admin: TenantAdmin) -> None:
        self._admin = admin

    async def _with_settings(self, record: model.Tenant) -> model.Tenant:
        out = model.Tenant()
        out.CopyFrom(record)
        out.settings_json = (await self._admin.settings(record)).model_dump_json()
        return out

    async def CreateTenant(self, request: svc.CreateTenantRequest, context: Context) -> model.Tenant:
        async def run() -> model.Tenant:
            created = await self._admin.create(request.token, _settings(request.settings_json))
            return await self._with_settings(created)

        return await _guarded(context, run())

    async def GetTenant(self, request: svc.GetTenantRequest, context: Context) -> model.Tenant:
        async def run() -> model.Tenant:
            return await self._with_settings(await self._admin.get(request.token))

        return await _guarded(context, run())

    async def ListTenants(self, request: svc.ListTenantsRequest, context: Context) -> svc.ListTenantsResponse:
        async def run() -> svc.ListTenantsResponse:
            p = await self._admin.page(*_paging(request.page))
            return svc.ListTenantsResponse(
                tenants=[await self._with_settings(t) for t in p.items], total=p.total
            )

        return await _guarded(context, run())

    async def UpdateTenant(self, request: svc.UpdateTenantRequest, context: Context) -> model.Tenant:
        async def run() -> model.Tenant:
            updated = await self._admin.update(request.token, _settings(request.settings_json))
            return await self._with_settings(updated)

        return await _guarded(context, run())

    async def DeleteTenant(
        self, request: svc.DeleteTenantRequest, context: Context
    ) -> svc.DeleteTenantResponse:
        async def run() -> svc.DeleteTenantResponse:
            removed = await self._admin.delete(request.token, request.confirm or None)
            return svc.DeleteTenantResponse(token=request.token, removed=removed)

        return await _guarded(context, run())


class CustomerManagementServicer(svc_grpc.CustomerManagementServicer):
    def __init__(self, customers: CustomerManagement, tenant: _TenantCheck) -> None:
        self._c = customers
        self._tenant = tenant

    async def CreateCustomerType(
        self, request: svc.CreateCustomerTypeRequest, context: Context
    ) -> model.CustomerType:
        async def run() -> model.CustomerType:
            return await self._c.create_customer_type(
                await self._tenant(request.tenant), request.customer_type
            )

        return await _guarded(context, run())

    async def GetCustomerType(
        self, request: svc.GetCustomerTypeRequest, context: Context
    ) -> model.CustomerType:
        async def run() -> model.CustomerType:
            return await self._c.get_customer_type(await self._tenant(request.tenant), request.token)

        return await _guarded(context, run())

    async def ListCustomerTypes(
        self, request: svc.ListCustomerTypesRequest, context: Context
    ) -> svc.ListCustomerTypesResponse:
        async def run() -> svc.ListCustomerTypesResponse:
            p = await self._c.list_customer_types(await self._tenant(request.tenant), *_paging(request.page))
            return svc.ListCustomerTypesResponse(customer_types=p.items, total=p.total)

        return await _guarded(context, run())

    async def UpdateCustomerType(
        self, request: svc.UpdateCustomerTypeRequest, context: Context
    ) -> model.CustomerType:
        async def run() -> model.CustomerType:
            return await self._c.update_customer_type(
                await self._tenant(request.tenant), request.customer_type
            )

        return await _guarded(context, run())

    async def DeleteCustomerType(
        self, request: svc.DeleteCustomerTypeRequest, context: Context
    ) -> svc.DeleteResponse:
        async def run() -> svc.DeleteResponse:
            await self._c.delete_customer_type(await self._tenant(request.tenant), request.token)
            return svc.DeleteResponse(token=request.token)

        return await _guarded(context, run())

    async def CreateCustomer(self, request: svc.CreateCustomerRequest, context: Context) -> model.Customer:
        async def run() -> model.Customer:
            return await self._c.create_customer(await self._tenant(request.tenant), request.customer)

        return await _guarded(context, run())

    async def GetCustomer(self, request: svc.GetCustomerRequest, context: Context) -> model.Customer:
        async def run() -> model.Customer:
            return await self._c.get_customer(await self._tenant(request.tenant), request.token)

        return await _guarded(context, run())

    async def ListCustomers(
        self, request: svc.ListCustomersRequest, context: Context
    ) -> svc.ListCustomersResponse:
        async def run() -> svc.ListCustomersResponse:
            tenant = await self._tenant(request.tenant)
            p = await self._c.list_customers(tenant, request.parent or None, *_paging(request.page))
            return svc.ListCustomersResponse(customers=p.items, total=p.total)

        return await _guarded(context, run())

    async def UpdateCustomer(self, request: svc.UpdateCustomerRequest, context: Context) -> model.Customer:
        async def run() -> model.Customer:
            return await self._c.update_customer(await self._tenant(request.tenant), request.customer)

        return await _guarded(context, run())

    async def DeleteCustomer(
        self, request: svc.DeleteCustomerRequest, context: Context
    ) -> svc.DeleteResponse:
        async def run() -> svc.DeleteResponse:
            await self._c.delete_customer(await self._tenant(request.tenant), request.token)
            return svc.DeleteResponse(token=request.token)

        return await _guarded(context, run())

    async def ListCustomerDevices(
        self, request: svc.ListCustomerDevicesRequest, context: Context
    ) -> svc.ListDevicesResponse:
        async def run() -> svc.ListDevicesResponse:
            tenant = await self._tenant(request.tenant)
            p = await self._c.customer_devices(tenant, request.token, *_paging(request.page))
            return svc.ListDevicesResponse(devices=p.items, total=p.total)

        return await _guarded(context, run())
