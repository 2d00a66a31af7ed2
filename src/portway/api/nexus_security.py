"""Nexus's security endpoints: users, roles and privileges, over Portway's user store.

Privileges get Nexus-style names: a repository privilege is
`nx-repository-view-docker-<repository pattern>-<action>` (browse, read, add, edit, delete,
or `*`), an admin privilege `nx-users-all`, `nx-roles-all`, `nx-repository-admin-*-*-*`,
`nx-settings-all`, `nx-audit-all`, and `nx-all` for administrators. A role's `privileges`
use those names; its `roles` name the roles it includes.
"""

from __future__ import annotations

import asyncio
import re
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from portway.api.problems import Problem
from portway.api.routing import Call, Operation, json_response, no_content
from portway.auth.privileges import ACTIONS, Privilege, Role

ADMIN_NAMES = {
    "users": "nx-users-all",
    "roles": "nx-roles-all",
    "repositories": "nx-repository-admin-*-*-*",
    "settings": "nx-settings-all",
    "audit": "nx-audit-all",
    "*": "nx-all",
}
ADMIN_BY_NAME = {v: k for k, v in ADMIN_NAMES.items()}
_VIEW = re.compile(r"^nx-repository-view-(?:docker|\*)-(.+)-(browse|read|add|edit|delete|\*)$")
USERS = "/service/rest/v1/security/users"
ROLES = "/service/rest/v1/security/roles"


class ApiUser(BaseModel):
    userId: str
    firstName: str = ""
    lastName: str = ""
    emailAddress: str = ""
    source: str = "default"
    status: Literal["active", "locked", "disabled", "changepassword"] = "active"
    readOnly: bool = False
    roles: list[str] = []
    externalRoles: list[str] = []


class ApiCreateUser(BaseModel):
    userId: str = Field(min_length=1, max_length=128)
    firstName: str | None = None
    lastName: str | None = None
    emailAddress: str | None = None
    password: str
    status: Literal["active", "disabled"] = "active"
    roles: list[str] = []


class RoleRequest(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    name: str | None = None
    description: str | None = None
    privileges: list[str] = []
    roles: list[str] = []


class RoleResponse(BaseModel):
    id: str
    source: str = "default"
    name: str
    description: str = ""
    readOnly: bool = False
    privileges: list[str] = []
    roles: list[str] = []


class ApiPrivilege(BaseModel):
    type: Literal["application", "repository-view"]
    name: str
    description: str = ""
    readOnly: bool = True
    format: str | None = None
    repository: str | None = None
    actions: list[str] = []
    domain: str | None = None


def privilege_names(role: Role) -> list[str]:
    names = [ADMIN_NAMES[a] for a in sorted(role.admin)]
    for priv in role.privileges:
        acts = ["*"] if priv.actions == ACTIONS else sorted(priv.actions)
        names += [f"nx-repository-view-docker-{priv.repository}-{a}" for a in acts]
    return names


def role_of(req: RoleRequest) -> Role:
    admin: set[str] = set()
    grants: dict[str, set[str]] = {}
    for name in req.privileges:
        if name in ADMIN_BY_NAME:
            admin.add(ADMIN_BY_NAME[name])
            continue
        m = _VIEW.match(name)
        if m is None:
            raise Problem(400, f"privileges: no privilege {name!r} (see /security/privileges)")
        pattern, action = m.groups()
        grants.setdefault(pattern, set()).update(ACTIONS if action == "*" else {action})
    privileges = tuple(Privilege(p, frozenset(a)) for p, a in sorted(grants.items()))
    return Role(req.id, privileges, tuple(req.roles), frozenset(admin), req.description or "")


def _role_answer(role: Role) -> dict[str, object]:
    return RoleResponse(
        id=role.name,
        name=role.name,
        description=role.description,
        privileges=privilege_names(role),
        roles=list(role.roles),
        readOnly=role.name == "admin",
    ).model_dump()


def _user_answer(name: str, disabled: bool, roles: list[str]) -> dict[str, object]:
    return ApiUser(
        userId=name, firstName=name, status="disabled" if disabled else "active", roles=roles
    ).model_dump()


async def list_users(call: Call) -> web.StreamResponse:
    wanted = call.query("userId")
    users = await asyncio.to_thread(call.services.users.list)
    return json_response(
        [
            _user_answer(u.name, u.disabled, list(u.roles))
            for u in users
            if not wanted or u.name.startswith(wanted)
        ]
    )


async def create_user(call: Call) -> web.StreamResponse:
    body: ApiCreateUser = call.body
    users = call.services.users
    await asyncio.to_thread(users.add, body.userId, body.password, body.roles, actor=call.actor)
    if body.status == "disabled":
        await asyncio.to_thread(users.set_disabled, body.userId, True, actor=call.actor)
    return json_response(_user_answer(body.userId, body.status == "disabled", body.roles))


async def update_user(call: Call) -> web.StreamResponse:
    body: ApiUser = call.body
    name = call.path("userId")
    if body.userId != name:
        raise Problem(400, f"userId: {body.userId!r} is not {name!r} (user ids cannot change)")
    users = call.services.users
    found = await asyncio.to_thread(users.store.get_user, name)
    if found is None:
        raise Problem(404, f"no user {name!r}")
    await asyncio.to_thread(users.set_roles, name, body.roles, actor=call.actor)
    disabled = body.status in ("disabled", "locked")
    if disabled != found.disabled:
        await asyncio.to_thread(users.set_disabled, name, disabled, actor=call.actor)
    return no_content()


async def delete_user(call: Call) -> web.StreamResponse:
    await asyncio.to_thread(call.services.users.delete, call.path("userId"), actor=call.actor)
    return no_content()


async def change_password(call: Call) -> web.StreamResponse:
    name, password = call.path("userId"), str(call.body).strip("\r\n")
    if (
        call.principal is not None
        and call.principal.name != name
        and not call.principal.has_admin("users")
    ):
        raise Problem(403, "only the user or a user administrator may change this password")
    await asyncio.to_thread(call.services.users.set_password, name, password, actor=call.actor)
    return no_content()


async def list_roles(call: Call) -> web.StreamResponse:
    roles = await asyncio.to_thread(call.services.roles.list)
    return json_response([_role_answer(r) for r in roles])


async def _find_role(call: Call) -> Role:
    name = call.path("id")
    role = await asyncio.to_thread(call.services.roles.store.get_role, name)
    if role is None:
        raise Problem(404, f"no role {name!r}")
    return role


async def get_role(call: Call) -> web.StreamResponse:
    return json_response(_role_answer(await _find_role(call)))


async def create_role(call: Call) -> web.StreamResponse:
    role = role_of(call.body)
    roles = call.services.roles
    if await asyncio.to_thread(roles.store.get_role, role.name) is not None:
        raise Problem(409, f"role {role.name!r} exists")
    await asyncio.to_thread(roles.put, role, actor=call.actor)
    return json_response(_role_answer(role))


async def update_role(call: Call) -> web.StreamResponse:
    if call.body.id != call.path("id"):
        raise Problem(400, "id: role ids cannot change")
    await _find_role(call)
    await asyncio.to_thread(call.services.roles.put, role_of(call.body), actor=call.actor)
    return no_content()


async def delete_role(call: Call) -> web.StreamResponse:
    await asyncio.to_thread(call.services.roles.delete, call.path("id"), actor=call.actor)
    return no_content()


def _privileges(call: Call) -> list[ApiPrivilege]:
    out = [
        ApiPrivilege(
            type="application",
            name=name,
            domain=admin,
            description=f"admin privilege {admin!r}",
            actions=["ALL"],
        )
        for admin, name in ADMIN_NAMES.items()
    ]
    patterns = ["*", *sorted(d.name for d in call.ctx.snapshot.definitions)]
    for pattern in patterns:
        for action in ("browse", "read", "add", "edit", "delete", "*"):
            out.append(
                ApiPrivilege(
                    type="repository-view",
                    name=f"nx-repository-view-docker-{pattern}-{action}",
                    description=f"{action} on {pattern}",
                    format="docker",
                    repository=pattern,
                    actions=[action.upper() if action != "*" else "ALL"],
                )
            )
    return out


async def list_privileges(call: Call) -> web.StreamResponse:
    return json_response([p.model_dump(exclude_none=True) for p in _privileges(call)])


async def get_privilege(call: Call) -> web.StreamResponse:
    name = call.path("name")
    found = next((p for p in _privileges(call) if p.name == name), None)
    if found is None:
        m = _VIEW.match(name)
        if m is None:
            raise Problem(404, f"no privilege {name!r}")
        pattern, action = m.groups()
        found = ApiPrivilege(
            type="repository-view",
            name=name,
            format="docker",
            repository=pattern,
            actions=[action.upper()],
        )
    return json_response(found.model_dump(exclude_none=True))


def _op(
    method: str, path: str, handler: object, summary: str, tag: str, privilege: str, **kw: object
) -> Operation:
    return Operation(method, path, handler, summary, tag, privilege, **kw)  # type: ignore[arg-type]


OPERATIONS: list[Operation] = [
    _op("GET", USERS, list_users, "Users", "security", "users", responses={200: (ApiUser, True)}),
    _op(
        "POST",
        USERS,
        create_user,
        "Create a user",
        "security",
        "users",
        body=ApiCreateUser,
        responses={200: (ApiUser, False)},
    ),
    _op(
        "PUT",
        USERS + "/{userId}",
        update_user,
        "Change a user's roles and status",
        "security",
        "users",
        body=ApiUser,
        responses={204: (None, False)},
    ),
    _op(
        "DELETE",
        USERS + "/{userId}",
        delete_user,
        "Delete a user",
        "security",
        "users",
        responses={204: (None, False)},
    ),
    Operation(
        "PUT",
        USERS + "/{userId}/change-password",
        change_password,
        "Set a user's password (text/plain body)",
        "security",
        None,
        text_body=True,
        responses={204: (None, False)},
    ),
    _op(
        "GET",
        ROLES,
        list_roles,
        "Roles",
        "security",
        "roles",
        responses={200: (RoleResponse, True)},
    ),
    _op(
        "POST",
        ROLES,
        create_role,
        "Create a role",
        "security",
        "roles",
        body=RoleRequest,
        responses={200: (RoleResponse, False)},
    ),
    _op(
        "GET",
        ROLES + "/{id}",
        get_role,
        "A role",
        "security",
        "roles",
        responses={200: (RoleResponse, False)},
    ),
    _op(
        "PUT",
        ROLES + "/{id}",
        update_role,
        "Change a role",
        "security",
        "roles",
        body=RoleRequest,
        responses={204: (None, False)},
    ),
    _op(
        "DELETE",
        ROLES + "/{id}",
        delete_role,
        "Delete a role",
        "security",
        "roles",
        responses={204: (None, False)},
    ),
    _op(
        "GET",
        "/service/rest/v1/security/privileges",
        list_privileges,
        "Privileges",
        "security",
        "roles",
        responses={200: (ApiPrivilege, True)},
    ),
    _op(
        "GET",
        "/service/rest/v1/security/privileges/{name}",
        get_privilege,
        "A privilege",
        "security",
        "roles",
        responses={200: (ApiPrivilege, False)},
    ),
]
