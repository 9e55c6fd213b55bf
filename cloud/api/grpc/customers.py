"""The gRPC ``CustomerManagement`` service: customer types, customers and a customer's devices,
an adapter over :class:`~fieldgate.cloud.services.customers.CustomerManagement` (the rules are
there, as for the REST routes). ``ApiAuth`` (cloud/api/grpc/server.py) makes its methods READ
or WRITE of the request's tenant; InUse (a customer with children or an active assignment) is
FAILED_PRECONDITION.
"""

from __future__ import annotations

from fieldgate.cloud.api.grpc.convert import Context, TenantCheck, paging
from fieldgate.cloud.services.customers import CustomerManagement
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc


class CustomerManagementServicer(svc_grpc.CustomerManagementServicer):
    def __init__(self, customers: CustomerManagement, tenant: TenantCheck) -> None:
        self._c = customers
        self._tenant = tenant

    async def CreateCustomerType(
        self, request: svc.CreateCustomerTypeRequest, context: Context
    ) -> model.CustomerType:
        return await self._c.create_customer_type(await self._tenant(request.tenant), request.customer_type)

    async def GetCustomerType(
        self, request: svc.GetCustomerTypeRequest, context: Context
    ) -> model.CustomerType:
        return await self._c.get_customer_type(await self._tenant(request.tenant), request.token)

    async def ListCustomerTypes(
        self, request: svc.ListCustomerTypesRequest, context: Context
    ) -> svc.ListCustomerTypesResponse:
        p = await self._c.list_customer_types(await self._tenant(request.tenant), *paging(request.page))
        return svc.ListCustomerTypesResponse(customer_types=p.items, total=p.total)

    async def UpdateCustomerType(
        self, request: svc.UpdateCustomerTypeRequest, context: Context
    ) -> model.CustomerType:
        return await self._c.update_customer_type(await self._tenant(request.tenant), request.customer_type)

    async def DeleteCustomerType(
        self, request: svc.DeleteCustomerTypeRequest, context: Context
    ) -> svc.DeleteResponse:
        await self._c.delete_customer_type(await self._tenant(request.tenant), request.token)
        return svc.DeleteResponse(token=request.token)

    async def CreateCustomer(self, request: svc.CreateCustomerRequest, context: Context) -> model.Customer:
        return await self._c.create_customer(await self._tenant(request.tenant), request.customer)

    async def GetCustomer(self, request: svc.GetCustomerRequest, context: Context) -> model.Customer:
        return await self._c.get_customer(await self._tenant(request.tenant), request.token)

    async def ListCustomers(
        self, request: svc.ListCustomersRequest, context: Context
    ) -> svc.ListCustomersResponse:
        tenant = await self._tenant(request.tenant)
        p = await self._c.list_customers(tenant, request.parent or None, *paging(request.page))
        return svc.ListCustomersResponse(customers=p.items, total=p.total)

    async def UpdateCustomer(self, request: svc.UpdateCustomerRequest, context: Context) -> model.Customer:
        return await self._c.update_customer(await self._tenant(request.tenant), request.customer)

    async def DeleteCustomer(
        self, request: svc.DeleteCustomerRequest, context: Context
    ) -> svc.DeleteResponse:
        await self._c.delete_customer(await self._tenant(request.tenant), request.token)
        return svc.DeleteResponse(token=request.token)

    async def ListCustomerDevices(
        self, request: svc.ListCustomerDevicesRequest, context: Context
    ) -> svc.ListDevicesResponse:
        tenant = await self._tenant(request.tenant)
        p = await self._c.customer_devices(tenant, request.token, *paging(request.page))
        return svc.ListDevicesResponse(devices=p.items, total=p.total)
