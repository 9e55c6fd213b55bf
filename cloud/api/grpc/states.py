"""The gRPC ``DeviceStates`` service: a device's last-known state and the tenant's states by
presence, an adapter over :class:`~fieldgate.cloud.services.management.Management` (as the REST
routes, cloud/api/rest/routes/state.py). A state travels as the JSON document the REST API
answers (:class:`~fieldgate.cloud.services.documents.DeviceStateOut`) in ``state_json``.
These are tenant-wide reads: customer users are refused by ``ApiAuth`` already.
"""

from __future__ import annotations

from typing import cast

from fieldgate.cloud.api.grpc.convert import Context, TenantCheck, paging
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.services.documents import DeviceStateOut
from fieldgate.cloud.services.management import Management
from fieldgate.cloud.store.state import DeviceState, Presence
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc


def _state_reply(state: DeviceState) -> svc.DeviceStateReply:
    out = DeviceStateOut.of(state)
    return svc.DeviceStateReply(device=out.device, presence=out.presence, state_json=out.model_dump_json())


class DeviceStatesServicer(svc_grpc.DeviceStatesServicer):
    def __init__(self, mgmt: Management, tenant: TenantCheck) -> None:
        self._mgmt = mgmt
        self._tenant = tenant

    async def GetDeviceState(
        self, request: svc.GetDeviceStateRequest, context: Context
    ) -> svc.DeviceStateReply:
        tenant = await self._tenant(request.tenant)
        return _state_reply(await self._mgmt.device_state(tenant, request.device))

    async def ListDeviceStates(
        self, request: svc.ListDeviceStatesRequest, context: Context
    ) -> svc.ListDeviceStatesResponse:
        tenant = await self._tenant(request.tenant)
        if request.presence not in ("", "present", "missing"):
            raise InvalidRequest(f"presence {request.presence[:40]!r} is not present, missing or empty")
        presence = cast(Presence, request.presence) if request.presence else None
        p = await self._mgmt.list_device_states(tenant, presence, *paging(request.page))
        return svc.ListDeviceStatesResponse(states=[_state_reply(s) for s in p.items], total=p.total)
