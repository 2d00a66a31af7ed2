"""What every UI page shares: templates, the signed-in user, CSRF checks, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from portway.api.services import AdminServices
from portway.auth.privileges import Principal, allowed_actions
from portway.http.context import CONTEXT_KEY, AppContext
from portway.ui.session import LOGIN_COOKIE, SESSION_COOKIE, Sessions, load_key

HERE = Path(__file__).parent


class SessionKeeper:
    """This worker's `Sessions`, made at first use, off the event loop: the key is the data
    folder's `ui-session.key` on one host, the database's in a cluster (ui/session_db.py)."""

    def __init__(self) -> None:
        self.sessions: Sessions | None = None

    async def get(self, ctx: AppContext) -> Sessions:
        if self.sessions is None:
            self.sessions = Sessions(await asyncio.to_thread(_load_key, ctx))
        return self.sessions


def _load_key(ctx: AppContext) -> bytes:
    data_dir = ctx.settings.server.data_dir
    engine = ctx.admin.session_engine if ctx.admin is not None else None
    if engine is None:
        return load_key(data_dir)
    from portway.ui.session_db import shared_key

    return shared_key(engine, data_dir)


SESSIONS_KEY = web.AppKey("portway_ui_sessions", SessionKeeper)
ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
}


class Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Page:
    """One request to a UI page: who asks (None: security is off) and the services."""

    request: web.Request
    ctx: AppContext
    services: AdminServices
    sessions: Sessions
    user: str | None
    principal: Principal | None

    def may(self, repository: str, action: str) -> bool:
        if self.principal is None:
            return True
        return action in allowed_actions(self.principal, repository)

    def is_admin(self, privilege: str = "repositories") -> bool:
        return self.principal is None or self.principal.has_admin(privilege)

    def require_admin(self, privilege: str) -> None:
        if not self.is_admin(privilege):
            raise Refusal(403, f"this page needs the admin privilege {privilege!r}")

    @property
    def csrf(self) -> str:
        anchor = self.request.cookies.get(SESSION_COOKIE, "") if self.user else "open"
        return self.sessions.csrf(anchor)

    async def form(self) -> dict[str, str]:
        """The posted form, after its CSRF token is checked."""
        data = await self.request.post()
        fields = {k: v for k, v in data.items() if isinstance(v, str)}
        anchor = self.request.cookies.get(SESSION_COOKIE) if self.user else "open"
        if not self.sessions.csrf_ok(anchor, fields.get("csrf")):
            raise Refusal(403, "this form expired or did not come from this page: reload it")
        return fields

    def render(self, template: str, status: int = 200, **values: Any) -> web.Response:
        return render(template, status, page=self, **values)


def render(template: str, status: int = 200, **values: Any) -> web.Response:
    values.setdefault("page", None)
    body = ENV.get_template(template).render(**values)
    return web.Response(
        status=status, text=body, content_type="text/html", headers=SECURITY_HEADERS
    )


def security_on(ctx: AppContext) -> bool:
    from portway.http.auth import SecurityAuthorizer

    return isinstance(ctx.authorizer, SecurityAuthorizer)


def on_main_listener(request: web.Request) -> bool:
    ports = request.app[CONTEXT_KEY].routes.ports
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = int(sockname[1]) if isinstance(sockname, tuple) and len(sockname) >= 2 else 0
    return next(iter(ports), None) == port  # the main listener is bound first


async def sessions_of(app: web.Application) -> Sessions:
    return await app[SESSIONS_KEY].get(app[CONTEXT_KEY])


PageHandler = Callable[[Page], Awaitable[web.StreamResponse]]


def page(handler: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A signed-in page: no session sends the browser to the login form."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if not on_main_listener(request):
            raise web.HTTPNotFound(text="the web UI is served on the main listener")
        ctx = request.app[CONTEXT_KEY]
        assert ctx.admin is not None
        sessions = await sessions_of(request.app)
        user: str | None = None
        principal: Principal | None = None
        if security_on(ctx):
            user = sessions.user_of(request.cookies.get(SESSION_COOKIE))
            if user is not None:
                principal = await asyncio.to_thread(ctx.admin.users.store.principal, user)
            if principal is None:
                target = request.path_qs if request.method == "GET" else "/ui/"
                raise web.HTTPSeeOther(f"/ui/login?{_next_query(target)}")
        current = Page(request, ctx, ctx.admin, sessions, user, principal)
        try:
            return await handler(current)
        except Refusal as refusal:
            return current.render("error.html", refusal.status, message=refusal.message)

    return handle


def _next_query(target: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"next": target})


def safe_next(target: str | None) -> str:
    """Only a path of the UI itself (no open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/"


__all__ = ["LOGIN_COOKIE", "Page", "Refusal", "page", "render", "safe_next", "sessions_of"]
