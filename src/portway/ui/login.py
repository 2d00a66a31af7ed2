"""Sign in with a user name and password (checked as a Basic login is), sign out."""

from __future__ import annotations

import asyncio

from aiohttp import web

from portway.auth.errors import AuthError, LoginLocked
from portway.http.context import CONTEXT_KEY
from portway.http.forwarded import client_address, client_origin
from portway.ui.session import LOGIN_COOKIE, SESSION_COOKIE, login_nonce
from portway.ui.web import (
    Page,
    on_main_listener,
    page,
    render,
    safe_next,
    security_on,
    sessions_of,
)


def _secure(request: web.Request) -> bool:
    ctx = request.app[CONTEXT_KEY]
    return client_origin(request, ctx.trusted).url("").startswith("https:")


async def _form(request: web.Request, status: int = 200, error: str | None = None) -> web.Response:
    sessions = await sessions_of(request.app)
    nonce = request.cookies.get(LOGIN_COOKIE) or login_nonce()
    response = render(
        "login.html",
        status,
        csrf=sessions.csrf(nonce),
        next=safe_next(request.query.get("next")),
        error=error,
    )
    response.set_cookie(
        LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path="/ui/",
        secure=_secure(request), max_age=3600,
    )  # fmt: skip
    return response


async def login_form(request: web.Request) -> web.StreamResponse:
    if not on_main_listener(request):
        raise web.HTTPNotFound(text="the web UI is served on the main listener")
    if not security_on(request.app[CONTEXT_KEY]):
        raise web.HTTPSeeOther("/ui/")
    return await _form(request)


async def login(request: web.Request) -> web.StreamResponse:
    if not on_main_listener(request):
        raise web.HTTPNotFound(text="the web UI is served on the main listener")
    ctx = request.app[CONTEXT_KEY]
    if not security_on(ctx):
        raise web.HTTPSeeOther("/ui/")
    from portway.http.auth import SecurityAuthorizer

    authorizer = ctx.authorizer
    assert isinstance(authorizer, SecurityAuthorizer)
    sessions = await sessions_of(request.app)
    data = await request.post()
    fields = {k: v for k, v in data.items() if isinstance(v, str)}
    if not sessions.csrf_ok(request.cookies.get(LOGIN_COOKIE), fields.get("csrf")):
        return await _form(request, 403, "This form expired: sign in again.")
    user, password = fields.get("username", ""), fields.get("password", "")
    if not user or not password:
        return await _form(request, 400, "Enter a user name and a password.")
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(
            authorizer.pool,
            authorizer.auth.authenticate_password,
            user,
            password,
            client_address(request, ctx.trusted),
        )
    except LoginLocked as exc:
        wait = f"Too many failed sign-ins: try again in {exc.retry_after} s."
        return await _form(request, 429, wait)
    except AuthError:
        return await _form(request, 401, "Wrong user name or password.")
    response = web.HTTPSeeOther(safe_next(fields.get("next")))
    response.set_cookie(
        SESSION_COOKIE, sessions.issue(user), httponly=True, samesite="Strict", path="/ui/",
        secure=_secure(request), max_age=sessions.lifetime,
    )  # fmt: skip
    response.del_cookie(LOGIN_COOKIE, path="/ui/")
    raise response


@page
async def logout(p: Page) -> web.StreamResponse:
    await p.form()
    response = web.HTTPSeeOther("/ui/login")
    response.del_cookie(SESSION_COOKIE, path="/ui/")
    raise response
