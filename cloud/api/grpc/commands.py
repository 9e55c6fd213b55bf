"""The gRPC ``CommandInvocations`` service: invoke a device's command and read an invocation, an
adapter over :class:`~fieldgate.cloud.services.commands.CommandService`."""

from __future__ import annotations

from fieldgate.cloud.api.grpc.convert import Context, TenantCheck, json_object
from fieldgate.cloud.services.commands import CommandService
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc


class CommandInvocationsServicer(svc_grpc.CommandInvocationsServicer):
    def __init__(self, commands: CommandService, tenant: TenantCheck) -> None:
        self._commands = commands
        self._tenant = tenant

    async def Invoke(self, request: svc.InvokeCommandRequest, context: Context) -> svc.InvocationState:
        tenant = await self._tenant(request.tenant)
        return await self._commands.invoke(
            tenant,
            request.device,
            request.command,
            json_object(request.params_json, "params_json"),
            request.ttl_s or None,
            request.initiator or "grpc",
        )

    async def GetInvocation(self, request: svc.GetInvocationRequest, context: Context) -> svc.InvocationState:
        return await self._commands.get(await self._tenant(request.tenant), request.id)
