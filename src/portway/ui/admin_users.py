"""Users and roles pages (admin privileges `users` and `roles`): list, create, disable or
enable a user, assign a user's roles, create a role. Every change goes through the services
the admin API and the CLI call (auth/services.py), audit record included."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from portway.auth.privileges import Privilege, PrivilegeError, Role
from portway.auth.services import PasswordRejected, privilege_text
from portway.auth.store_base import StoreError
from portway.ui.web import Page, Refusal, page


def _words(text: str) -> list[str]:
    return [w for w in text.replace(",", " ").split() if w]


async def _lists(p: Page) -> dict[str, Any]:
    rows = await asyncio.to_thread(p.services.users.list)
    roles = await asyncio.to_thread(p.services.roles.list)
    role_rows = [
        {"name": r.name, "privileges": privilege_text(r), "include": list(r.roles),
         "admin": sorted(r.admin), "description": r.description}
        for r in roles
    ]  # fmt: skip
    return {"rows": rows, "roles": [r.name for r in roles], "role_rows": role_rows}


async def _users_page(p: Page, status: int = 200, error: str | None = None) -> web.Response:
    q = p.request.query
    done = {k: q[k] for k in ("created", "role_created") if q.get(k)}
    return p.render("admin_users.html", status, error=error, done=done, **await _lists(p))


@page
async def users(p: Page) -> web.StreamResponse:
    p.require_admin("users")
    return await _users_page(p)


@page
async def create_user(p: Page) -> web.StreamResponse:
    p.require_admin("users")
    form = await p.form()
    name, password = form.get("username", "").strip(), form.get("password", "")
    chosen = _words(form.get("roles", ""))
    if not name or not password:
        return await _users_page(p, 400, "a user needs a name and a password")
    try:
        await asyncio.to_thread(p.services.users.add, name, password, chosen, actor=_actor(p))
    except (StoreError, PasswordRejected) as exc:
        return await _users_page(p, 400, str(exc))
    raise web.HTTPSeeOther("/ui/admin/users?" + urlencode({"created": name}))


@page
async def create_role(p: Page) -> web.StreamResponse:
    p.require_admin("roles")
    form = await p.form()
    try:
        privileges = []
        for text in form.get("privileges", "").split():
            repo, sep, actions = text.rpartition(":")
            if not sep:
                raise PrivilegeError(f"{text!r}: write REPOSITORY:ACTIONS, e.g. team-*:browse,read")
            privileges.append(Privilege(repo, frozenset(a for a in actions.split(",") if a)))
        role = Role(form.get("name", "").strip(), privileges=tuple(privileges),
                    roles=tuple(_words(form.get("include", ""))),
                    description=form.get("description", "").strip())  # fmt: skip
        await asyncio.to_thread(p.services.roles.put, role, actor=_actor(p))
    except (PrivilegeError, StoreError) as exc:
        return await _users_page(p, 400, str(exc))
    raise web.HTTPSeeOther("/ui/admin/users?" + urlencode({"role_created": role.name}))


def _actor(p: Page) -> str:
    return p.user or "anonymous"


async def _user(p: Page, name: str) -> Any:
    found = next((u for u in await asyncio.to_thread(p.services.users.list) if u.name == name),
                 None)  # fmt: skip
    if found is None:
        raise Refusal(404, f"no user {name!r}")
    return found


async def _user_page(p: Page, name: str, status: int = 200, error: str | None = None
                     ) -> web.Response:  # fmt: skip
    user = await _user(p, name)
    roles = [r.name for r in await asyncio.to_thread(p.services.roles.list)]
    return p.render("admin_user.html", status, user=user, roles=roles, error=error,
                    saved=p.request.query.get("saved"),
                    myself=user.name == p.user)  # fmt: skip


@page
async def user(p: Page) -> web.StreamResponse:
    p.require_admin("users")
    return await _user_page(p, p.request.match_info["name"])


@page
async def set_roles(p: Page) -> web.StreamResponse:
    p.require_admin("users")
    name = p.request.match_info["name"]
    await p.form()
    chosen = [r for r in (await p.request.post()).getall("role", []) if isinstance(r, str)]
    await _user(p, name)
    try:
        await asyncio.to_thread(p.services.users.set_roles, name, chosen, actor=_actor(p))
    except StoreError as exc:
        return await _user_page(p, name, 400, str(exc))
    raise web.HTTPSeeOther(f"/ui/admin/users/{quote(name)}?saved=roles")


@page
async def set_state(p: Page) -> web.StreamResponse:
    p.require_admin("users")
    name = p.request.match_info["name"]
    form = await p.form()
    disable = form.get("state") == "disabled"
    await _user(p, name)
    if disable and name == p.user:
        return await _user_page(p, name, 400, "you are signed in as this user: another "
                                "administrator has to disable it")  # fmt: skip
    try:
        await asyncio.to_thread(p.services.users.set_disabled, name, disable, actor=_actor(p))
    except StoreError as exc:
        return await _user_page(p, name, 400, str(exc))
    raise web.HTTPSeeOther(f"/ui/admin/users/{quote(name)}?saved=" +
                           ("disabled" if disable else "enabled"))  # fmt: skip
