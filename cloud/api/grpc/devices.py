"""The gRPC ``DeviceManagement`` service: device types, devices and assignments, an adapter over
:class:`~fieldgate.cloud.services.management.Management` (the rules are there, so a request
refused over REST is refused here with the same message)."""

from __future__ import annotations

from fieldgate.cloud.api.grpc.convert import Context, TenantCheck, paging
from fieldgate.cloud.services.management import Management
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc


class DeviceManagementServicer(svc_grpc.DeviceManagementServicer):
    def __init__(self, mgmt: Management, tenant: TenantCheck) -> None:
        self._mgmt = mgmt
        self._tenant = tenant

    async def CreateDeviceType(
        self, request: svc.CreateDeviceTypeRequest, context: Context
    ) -> model.DeviceType:
        return await self._mgmt.create_device_type(await self._tenant(request.tenant), request.device_type)

    async def GetDeviceType(self, request: svc.GetDeviceTypeRequest, context: Context) -> model.DeviceType:
        return await self._mgmt.get_device_type(await self._tenant(request.tenant), request.token)

    async def UpdateDeviceType(
        self, request: svc.UpdateDeviceTypeRequest, context: Context
    ) -> model.DeviceType:
        return await self._mgmt.update_device_type(await self._tenant(request.tenant), request.device_type)

    async def DeleteDeviceType(
        self, request: svc.DeleteDeviceTypeRequest, context: Context
    ) -> svc.DeleteResponse:
        await self._mgmt.delete_device_type(await self._tenant(request.tenant), request.token)
        return svc.DeleteResponse(token=request.token)

    async def ListDeviceTypes(
        self, request: svc.ListDeviceTypesRequest, context: Context
    ) -> svc.ListDeviceTypesResponse:
        p = await self._mgmt.list_device_types(await self._tenant(request.tenant), *paging(request.page))
        return svc.ListDeviceTypesResponse(device_types=p.items, total=p.total)

    async def CreateDevice(self, request: svc.CreateDeviceRequest, context: Context) -> model.Device:
        return await self._mgmt.create_device(await self._tenant(request.device.tenant), request.device)

    async def GetDevice(self, request: svc.GetDeviceRequest, context: Context) -> model.Device:
        return await self._mgmt.get_device(await self._tenant(request.tenant), request.token)

    async def ListDevices(self, request: svc.ListDevicesRequest, context: Context) -> svc.ListDevicesResponse:
        p = await self._mgmt.list_devices(await self._tenant(request.tenant), *paging(request.page))
        return svc.ListDevicesResponse(devices=p.items, total=p.total)

    async def UpdateDevice(self, request: svc.UpdateDeviceRequest, context: Context) -> model.Device:
        return await self._mgmt.update_device(await self._tenant(request.device.tenant), request.device)

    async def DeleteDevice(self, request: svc.DeleteDeviceRequest, context: Context) -> svc.DeleteResponse:
        await self._mgmt.delete_device(await self._tenant(request.tenant), request.token)
        return svc.DeleteResponse(token=request.token)

    async def CreateAssignment(
        self, request: svc.CreateAssignmentRequest, context: Context
    ) -> model.Assignment:
        tenant = await self._tenant(request.assignment.tenant)
        return await self._mgmt.create_assignment(tenant, request.assignment)

    async def ListAssignments(
        self, request: svc.ListAssignmentsRequest, context: Context
    ) -> svc.ListAssignmentsResponse:
        tenant = await self._tenant(request.tenant)
        p = await self._mgmt.list_assignments(tenant, request.device or None, *paging(request.page))
        return svc.ListAssignmentsResponse(assignments=p.items, total=p.total)

    async def ReleaseAssignment(
        self, request: svc.ReleaseAssignmentRequest, context: Context
    ) -> model.Assignment:
        return await self._mgmt.release_assignment(await self._tenant(request.tenant), request.token)
