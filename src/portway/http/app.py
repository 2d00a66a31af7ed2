"""The aiohttp application over an `AppContext` (built by the composition root, compose.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from aiohttp import web

from portway.http.auth import remember_route
from portway.http.context import CONTEXT_KEY, AppContext
from portway.http.drain import DRAIN_KEY, DrainState, close_after_answer
from portway.http.errors import API_VERSION, FAULTS_KEY, FaultReport, error_middleware
from portway.http.forwarded import client_origin
from portway.http.observe import REQUEST_ID, middleware
from portway.http.observe import install as install_observe
from portway.http.token_endpoint import token_endpoint
from portway.http.v1 import handle_v1
from portway.http.v2.dispatch import dispatch_v2
from portway.observe.accesslog import HEADER as REQUEST_ID_HEADER
from portway.oci.errors import RegistryError


def _local_port(request: web.Request) -> int:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return int(sockname[1])
    return 0


async def handle(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT_KEY]
    # Routed on the path as sent: percent-escapes are decoded per name or reference once the
    # path is split (http/v2/dispatch.py), so "%2F" never adds a path segment.
    path = request.raw_path.split("?", 1)[0]
    origin = client_origin(request, ctx.trusted)
    host = origin.host if origin.forwarded else request.host
    route = ctx.routes.resolve(_local_port(request), host, path)
    if route is None and await ctx.settle():  # a repository another worker just made?
        route = ctx.routes.resolve(_local_port(request), host, path)
    if route is None:
        raise RegistryError("NAME_UNKNOWN", "no such repository")
    if route.via == "path" and origin.forwarded:
        # A proxy mapped a root (or X-Forwarded-Prefix) onto /repository/<repo>/.
        route = replace(route, prefix=origin.prefix or "")
    remember_route(request, route)
    rest = route.rest
    if rest == "/v2/token":
        return await token_endpoint(request, ctx, route)
    if rest in ("/v2", "/v2/"):
        if request.method not in ("GET", "HEAD"):
            raise RegistryError("UNSUPPORTED", status=405)
        await ctx.authorizer.authorize(request, route.repository, None, ())
        name = route.repository
        # A concealed name (routing.py): only whoever could see it learns it is missing.
        if (
            name is not None
            and await ctx.repository(name) is None
            and ctx.authorizer.visible(request, name)
        ):
            raise RegistryError("NAME_UNKNOWN", f"no repository {name!r}")
        return web.Response(body=b"{}", content_type="application/json")
    if rest.startswith("/v2/"):
        return await dispatch_v2(request, ctx, route, rest[3:])
    if rest.startswith("/v1/"):
        return await handle_v1(request, ctx, route, rest[3:])
    raise RegistryError("NOT_FOUND", f"nothing at {path[:120]!r}; registry API lives under /v2/")


def _answer_hook(drain: DrainState) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """Headers every answer carries, set in one hook (each hook is a coroutine per answer):
    the API version, the request id (set by the observe middleware) and, while draining,
    `Connection: close`."""
    version_name, version = API_VERSION

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers[version_name] = version
        rid = request.get(REQUEST_ID)
        if rid is not None:
            headers[REQUEST_ID_HEADER] = rid
        if drain.active:
            close_after_answer(response)

    return on_prepare


def build_app(ctx: AppContext) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[CONTEXT_KEY] = ctx
    app[FAULTS_KEY] = FaultReport()
    drain = app[DRAIN_KEY] = DrainState()
    obs = install_observe(app, ctx)  # metrics, access log, health routes: before the catch-all
    # One middleware: the observe middleware renders errors itself (portway.http.errors).
    app.middlewares.append(middleware(obs, ctx) if obs.active else error_middleware)
    app.on_response_prepare.append(_answer_hook(drain))
    if ctx.admin is not None:
        from portway.api.views import install as install_api

        install_api(app)  # /service/rest/v1/..., /api/v1/..., /api/openapi.json
        from portway.ui.routes import install as install_ui

        install_ui(app)  # the web UI: /ui/... and a redirect from /
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
