"""REST routes for user management: ``/api/v1/users``.

A tenant admin manages the users of its own tenant and can neither see, create, change nor
delete an instance admin (those are answered as if the user did not exist); an instance admin
manages every user. User names are unique in the whole instance (a login names no tenant), so
a name can be taken by a user the caller may not see: creating it is refused with the same
words whoever has it ("not available"), never "exists" and never who, so a tenant admin learns
nothing about other tenants' users (docs/security.md). Nobody deletes their own account (409),
so an instance cannot lose its last admin by accident. Passwords are write-only: no answer ever
contains a hash; they are at least ``MIN_PASSWORD`` characters.

No ``from __future__ import annotations`` here: see ``routes.registry``.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from fieldgate.cloud.api.rest.auth import AccessPolicy
from fieldgate.cloud.api.rest.models import UserIn, UserOut, UserPatch, error_docs
from fieldgate.cloud.api.rest.routes.registry import ERRORS
from fieldgate.cloud.domain.users import TENANT_PATTERN, UserRecord
from fieldgate.cloud.errors import Conflict, NotFound, UnknownReference
from fieldgate.cloud.services.access import Permission, Principal, Role, forbidden
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.store.users import Users


def users_router(users: Users, registry: Registry, policy: AccessPolicy) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERRORS, tags=["users"])
    Admin = Annotated[Principal, Depends(policy.require(Permission.ADMIN))]

    def may_manage(who: Principal, user: UserRecord) -> bool:
        if who.role is Role.INSTANCE_ADMIN:
            return True
        return user.tenant == who.tenant and user.role is not Role.INSTANCE_ADMIN

    async def managed(who: Principal, name: str) -> UserRecord:
        found = await users.get(name)
        if found is None or not may_manage(who, found):
            raise NotFound(f"user '{name[:70]}' does not exist")
        return found

    def check_grant(who: Principal, role: Role) -> None:
        if role is Role.INSTANCE_ADMIN and who.role is not Role.INSTANCE_ADMIN:
            raise forbidden("only instance admins may grant the instance-admin role")

    async def check_customer(tenant: str, customer: str | None) -> None:
        if customer is not None and await registry.get_customer(tenant, customer) is None:
            raise UnknownReference("customer", customer, "create it with POST /api/v1/customers")

    @router.post(
        "/users",
        status_code=status.HTTP_201_CREATED,
        responses=error_docs({409: "the name is not available (taken: by whom is not said)"}),
    )
    async def create_user(body: UserIn, who: Admin) -> UserOut:
        """Create a user of the caller's tenant (an instance admin: of any tenant)."""
        role = Role(body.role)
        check_grant(who, role)
        tenant = body.tenant or who.tenant
        if not who.may_act_for(tenant):
            raise forbidden("tenant admins create users of their own tenant only")
        if tenant != who.tenant and await registry.get_tenant(tenant) is None:
            raise UnknownReference("tenant", tenant)
        await check_customer(tenant, body.customer)
        if not await users.create(body.name, body.password, tenant=tenant, role=role, customer=body.customer):
            # Whoever has the name (this tenant, another, an instance admin): the same words.
            raise Conflict(f"user name '{body.name}' is not available; choose another")
        return UserOut.from_record(UserRecord(body.name, tenant, role, body.customer))

    @router.get("/users")
    async def list_users(
        who: Admin,
        tenant: Annotated[
            str | None,
            Query(
                max_length=63,
                pattern=TENANT_PATTERN.pattern,
                description="instance admins: only this tenant's",
            ),
        ] = None,
    ) -> list[UserOut]:
        """The users the caller may manage, by name."""
        if who.role is Role.INSTANCE_ADMIN:
            found = await users.list_users(tenant)
        else:
            if tenant is not None and tenant != who.tenant:
                raise forbidden("tenant admins list users of their own tenant only")
            found = await users.list_users(who.tenant)
        return [UserOut.from_record(u) for u in found if may_manage(who, u)]

    @router.get("/users/{name}", responses=error_docs({404: "no such user"}))
    async def get_user(name: str, who: Admin) -> UserOut:
        return UserOut.from_record(await managed(who, name))

    @router.patch(
        "/users/{name}",
        responses=error_docs(
            {
                404: "no such user",
                409: "the caller's own role, or a customer that does not go with the user's role",
            }
        ),
    )
    async def update_user(name: str, body: UserPatch, who: Admin) -> UserOut:
        """Change a user's password, role or customer (the tenant of a user never changes).
        A change ends the user's current tokens at once (401): the user logs in again. A
        customer user has a customer and no other user has one; what is valid depends on the
        user's role as it is, so a mismatch is a 409. Nobody changes their own role."""
        user = await managed(who, name)
        role = Role(body.role) if body.role is not None else None
        if role is not None:
            check_grant(who, role)
            if name == who.user and role is not user.role:
                raise Conflict("you cannot change your own role (another admin can)")
        new_role = role if role is not None else user.role
        # As the store applies it: a new role without a customer drops the old one.
        new_customer = body.customer if body.customer is not None or role is not None else user.customer
        if new_role is Role.CUSTOMER and not new_customer:
            raise Conflict(f"user '{name[:70]}' would be a customer user without a customer: give customer")
        if new_role is not Role.CUSTOMER and new_customer is not None:
            raise Conflict(
                f"user '{name[:70]}' is not a customer user ({new_role.value}): it has no customer"
            )
        await check_customer(user.tenant, body.customer)
        updated = await users.update(name, password=body.password, role=role, customer=body.customer)
        if updated is None:
            raise NotFound(f"user '{name[:70]}' does not exist")
        return UserOut.from_record(updated)

    @router.delete(
        "/users/{name}",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        responses=error_docs({404: "no such user", 409: "that is the caller's own account"}),
    )
    async def delete_user(name: str, who: Admin) -> Response:
        """Delete a user. Its tokens are refused at once (401)."""
        await managed(who, name)
        if name == who.user:
            raise Conflict("you cannot delete your own account")
        if not await users.delete(name):
            raise NotFound(f"user '{name[:70]}' does not exist")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
