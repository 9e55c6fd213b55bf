"""REST routes for device types, devices and assignments (thin: the rules are in ``management``).

This module deliberately does not use ``from __future__ import annotations``: FastAPI reads the
route signatures at definition time, and the per-app ``Auth`` dependency is a closure local.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, status
from pydantic import BaseModel

from fieldgate.cloud.api.rest.auth import AccessPolicy
from fieldgate.cloud.api.rest.models import (
    AssignmentIn,
    AssignmentOut,
    DeviceChange,
    DeviceIn,
    DeviceOut,
    DeviceTypeChange,
    DeviceTypeIn,
    DeviceTypeOut,
    PageOut,
    error_docs,
    page_fields,
)
from fieldgate.cloud.api.rest.paging import PageQuery
from fieldgate.cloud.services.access import Permission, Principal
from fieldgate.cloud.services.fleet import DeviceFilter, FleetQueries
from fieldgate.cloud.services.management import TOKEN_PATTERN, Management

ERRORS = error_docs(common=True)
# The token of a record a PUT replaces (one that is not a token cannot be a device's).
RecordToken = Annotated[str, Path(max_length=128, pattern=TOKEN_PATTERN)]


class Deleted(BaseModel):
    token: str
    deleted: bool = True


def registry_router(mgmt: Management, policy: AccessPolicy, search: FleetQueries | None = None) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERRORS)
    devices = search  # device search and filters (cloud/services/fleet.py)
    Read = Annotated[Principal, Depends(policy.require(Permission.READ))]
    Write = Annotated[Principal, Depends(policy.require(Permission.WRITE))]

    # device types

    @router.post(
        "/device-types",
        status_code=status.HTTP_201_CREATED,
        tags=["device types"],
        responses=error_docs({409: "a device type with that token exists"}),
    )
    async def create_device_type(body: DeviceTypeIn, who: Write) -> DeviceTypeOut:
        """Define a device type and the commands (with typed parameters) its devices accept."""
        return DeviceTypeOut.from_pb(await mgmt.create_device_type(who.tenant, body.to_pb(body.token)))

    @router.get("/device-types", tags=["device types"])
    async def list_device_types(who: Read, paging: PageQuery) -> PageOut[DeviceTypeOut]:
        p = await mgmt.list_device_types(who.tenant, paging.page, paging.page_size)
        return PageOut[DeviceTypeOut](items=[DeviceTypeOut.from_pb(d) for d in p.items], **page_fields(p))

    @router.get("/device-types/{token}", tags=["device types"], responses=error_docs({404: "no such type"}))
    async def get_device_type(token: str, who: Read) -> DeviceTypeOut:
        return DeviceTypeOut.from_pb(await mgmt.get_device_type(who.tenant, token))

    @router.put("/device-types/{token}", tags=["device types"], responses=error_docs({404: "no such type"}))
    async def update_device_type(token: RecordToken, body: DeviceTypeChange, who: Write) -> DeviceTypeOut:
        """Replace the type's name, description and commands (its devices accept the new
        commands from the next invocation on)."""
        return DeviceTypeOut.from_pb(await mgmt.update_device_type(who.tenant, body.to_pb(token)))

    @router.delete(
        "/device-types/{token}",
        tags=["device types"],
        responses=error_docs(
            {404: "no such type", 409: "a device has this type, or it is the tenant's default device type"}
        ),
    )
    async def delete_device_type(token: str, who: Write) -> Deleted:
        """Delete a device type no device has (409 naming one that has it); its presence
        interval goes with it."""
        await mgmt.delete_device_type(who.tenant, token)
        return Deleted(token=token)

    # devices

    @router.post(
        "/devices",
        status_code=status.HTTP_201_CREATED,
        tags=["devices"],
        responses=error_docs({409: "a device with that token exists"}),
    )
    async def create_device(body: DeviceIn, who: Write) -> DeviceOut:
        """Register a device of an existing device type (422 if the type does not exist)."""
        return DeviceOut.from_pb(await mgmt.create_device(who.tenant, body.to_pb(body.token)))

    @router.get("/devices", tags=["devices"])
    async def list_devices(
        who: Read,
        paging: PageQuery,
        search: Annotated[str | None, Query(max_length=128, description="substring of token or name")] = None,
        device_type: Annotated[str | None, Query(max_length=128, description="only this type's")] = None,
        presence: Annotated[
            Literal["present", "missing", "online", "offline"] | None,
            Query(description="present|missing (presence), online|offline (edge link)"),
        ] = None,
        group: Annotated[
            str | None, Query(max_length=128, description="members of this device group")
        ] = None,
        area: Annotated[
            str | None, Query(max_length=128, description="actively assigned to this area")
        ] = None,
    ) -> PageOut[DeviceOut]:
        """The tenant's devices by token; the filters combine (AND). An unknown group, area or
        device type is a 404, not an empty page."""
        if devices is not None:
            f = DeviceFilter(search, device_type, presence, group, area)
            p = await devices.list_devices(
                who.tenant, f, paging.page, paging.page_size, customer=who.scope_customer
            )
        else:
            p = await mgmt.list_devices(
                who.tenant, paging.page, paging.page_size, customer=who.scope_customer
            )
        return PageOut[DeviceOut](items=[DeviceOut.from_pb(d) for d in p.items], **page_fields(p))

    @router.get("/devices/{token}", tags=["devices"], responses=error_docs({404: "no such device"}))
    async def get_device(token: str, who: Read) -> DeviceOut:
        return DeviceOut.from_pb(await mgmt.get_device(who.tenant, token, customer=who.scope_customer))

    @router.put("/devices/{token}", tags=["devices"], responses=error_docs({404: "no such device"}))
    async def update_device(token: RecordToken, body: DeviceChange, who: Write) -> DeviceOut:
        """Replace the device's type, comments and metadata (422 naming the type if it does not
        exist)."""
        return DeviceOut.from_pb(await mgmt.update_device(who.tenant, body.to_pb(token)))

    @router.delete(
        "/devices/{token}",
        tags=["devices"],
        responses=error_docs(
            {404: "no such device", 409: "the device has an active assignment or is in a device group"}
        ),
    )
    async def delete_device(token: str, who: Write) -> Deleted:
        """Delete a device without an active assignment that is in no device group (409 naming
        what holds it). Its events and invocations stay; its token can be registered again and
        then continues that history (docs/model.md)."""
        await mgmt.delete_device(who.tenant, token)
        return Deleted(token=token)

    @router.get(
        "/devices/{token}/assignments",
        tags=["assignments"],
        responses=error_docs({404: "no such device"}),
    )
    async def list_device_assignments(token: str, who: Read, paging: PageQuery) -> PageOut[AssignmentOut]:
        p = await mgmt.device_assignments(
            who.tenant, token, paging.page, paging.page_size, customer=who.scope_customer
        )
        return PageOut[AssignmentOut](items=[AssignmentOut.from_pb(a) for a in p.items], **page_fields(p))

    # assignments

    @router.post(
        "/assignments",
        status_code=status.HTTP_201_CREATED,
        tags=["assignments"],
        responses=error_docs({409: "the device already has an active assignment"}),
    )
    async def create_assignment(body: AssignmentIn, who: Write) -> AssignmentOut:
        """Assign a device to a customer/area/asset; its events are tagged with the assignment."""
        return AssignmentOut.from_pb(await mgmt.create_assignment(who.tenant, body.to_pb()))

    @router.get("/assignments", tags=["assignments"])
    async def list_assignments(
        who: Read,
        paging: PageQuery,
        device: Annotated[str | None, Query(max_length=128, description="only this device's")] = None,
        customer: Annotated[
            str | None,
            Query(max_length=128, description="only those naming this customer (404 if none such)"),
        ] = None,
    ) -> PageOut[AssignmentOut]:
        """Assignments, newest first; the filters combine (AND)."""
        p = await mgmt.list_assignments(
            who.tenant,
            device,
            paging.page,
            paging.page_size,
            customer=who.scope_customer,
            of_customer=customer,
        )
        return PageOut[AssignmentOut](items=[AssignmentOut.from_pb(a) for a in p.items], **page_fields(p))

    @router.post(
        "/assignments/{token}/release",
        tags=["assignments"],
        responses=error_docs({404: "no such assignment"}),
    )
    async def release_assignment(token: str, who: Write) -> AssignmentOut:
        return AssignmentOut.from_pb(await mgmt.release_assignment(who.tenant, token))

    return router
