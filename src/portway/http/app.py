"""Composition root: settings -> stores -> repositories -> route table -> aiohttp app."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from portway.config import Settings
from portway.db.store import MetadataStore
from portway.http.auth import SecurityAuthorizer, remember_route, token_endpoint
from portway.http.context import CONTEXT_KEY, AppContext, Authorizer
from portway.http.errors import FAULTS_KEY, FaultReport, add_api_version, error_middleware
from portway.http.forwarded import TrustedProxies, client_origin
from portway.http.observe import install as install_observe
from portway.http.routing import RouteTable
from portway.http.v1 import handle_v1
from portway.http.v2.dispatch import dispatch_v2
from portway.oci.errors import RegistryError
from portway.repos.factory import build_repositories
from portway.storage.blobstore import BlobStore
from portway.storage.filesystem import FilesystemBackend


def open_stores(settings: Settings) -> tuple[MetadataStore, BlobStore]:
    data_dir = settings.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    meta = MetadataStore.open_sqlite(
        data_dir / "portway.db", busy_timeout=settings.server.database_busy_timeout
    )
    blobs = BlobStore(FilesystemBackend(data_dir / "storage"))
    return meta, blobs


def security(settings: Settings, meta: MetadataStore) -> tuple[Authorizer | None, str | None]:
    """The authorizer for `[security]`, and the admin's first password (first start only)."""
    if not settings.security.enabled:
        return None, None
    from portway.auth.ratelimit import LoginLimiter
    from portway.auth.service import AuthService
    from portway.auth.store import UserStore

    store = UserStore(meta.engine, read_engine=meta.read_engine)
    store.ensure_builtin_roles()
    password = store.ensure_admin(settings.server.data_dir)
    sec = settings.security
    limiter = LoginLimiter(
        meta.engine,
        sec.login_max_failures,
        sec.login_failure_window,
        max_failures_per_address=sec.login_max_failures_per_address,
        read_engine=meta.read_engine,
    )
    auth = AuthService.create(
        store,
        settings.server.data_dir,
        settings.repository,
        issuer="portway",
        token_ttl=sec.token_ttl,
        limiter=limiter,
    )
    authorizer = SecurityAuthorizer(auth, sec.service, sec.login_threads)
    return authorizer, password


def build_context(
    settings: Settings, meta: MetadataStore, blobs: BlobStore, authorizer: Authorizer | None = None
) -> AppContext:
    repos = build_repositories(settings, meta, blobs)
    if authorizer is None:
        authorizer = security(settings, meta)[0]
    ctx = AppContext(
        settings=settings,
        repos=repos,
        routes=RouteTable.from_settings(settings),
        trusted=TrustedProxies(settings.server.trusted_proxies),
    )
    if authorizer is not None:
        ctx.authorizer = authorizer
    return ctx


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
        if name is not None and name not in ctx.repos and ctx.authorizer.visible(request, name):
            raise RegistryError("NAME_UNKNOWN", f"no repository {name!r}")
        return web.Response(body=b"{}", content_type="application/json")
    if rest.startswith("/v2/"):
        return await dispatch_v2(request, ctx, route, rest[3:])
    if rest.startswith("/v1/"):
        return await handle_v1(request, ctx, route, rest[3:])
    raise RegistryError("NOT_FOUND", f"nothing at {path[:120]!r}; registry API lives under /v2/")


def build_app(ctx: AppContext) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=8 * 1024 * 1024)
    app[CONTEXT_KEY] = ctx
    app[FAULTS_KEY] = FaultReport()
    app.on_response_prepare.append(add_api_version)
    install_observe(app, ctx)  # metrics, access log, health routes: before the catch-all
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
