"""Parse a /v2 path into (image name, resource) and call the resource's handler."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from aiohttp import web

from portway.http.concealed import MissingRepository, concealable, repository_named
from portway.http.context import AppContext
from portway.http.routing import Route
from portway.http.v2 import blobs, listing, manifests, uploads
from portway.http.v2.call import V2Call
from portway.oci.errors import RegistryError
from portway.oci.names import check_name
from portway.repos.base import Repository

Handler = Callable[..., Awaitable[web.StreamResponse]]

# Image names may contain "manifests", "blobs"...: match the resource from the right. Each
# pattern comes with a piece of text every path it matches contains, so that a path is
# matched only against the patterns it can match (a `.+` match backtracks over the path).
_PATTERNS: list[tuple[str, re.Pattern[str], dict[str, Handler]]] = [
    (
        "/tags/list",
        re.compile(r"^(?P<name>.+)/tags/list$"),
        {"GET": listing.tags, "HEAD": listing.tags},
    ),
    (
        "/manifests/",
        re.compile(r"^(?P<name>.+)/manifests/(?P<ref>[^/]+)$"),
        {
            "GET": manifests.get,
            "HEAD": manifests.get,
            "PUT": manifests.put,
            "DELETE": manifests.delete,
        },
    ),
    ("/blobs/uploads", re.compile(r"^(?P<name>.+)/blobs/uploads/?$"), {"POST": uploads.start}),
    (
        "/blobs/uploads/",
        re.compile(r"^(?P<name>.+)/blobs/uploads/(?P<ref>[^/]+)$"),
        {
            "GET": uploads.status,
            "PATCH": uploads.patch,
            "PUT": uploads.finish,
            "DELETE": uploads.cancel,
        },
    ),
    (
        "/blobs/",
        re.compile(r"^(?P<name>.+)/blobs/(?P<ref>[^/]+)$"),
        {"GET": blobs.get, "HEAD": blobs.get, "DELETE": blobs.delete},
    ),
    (
        "/referrers/",
        re.compile(r"^(?P<name>.+)/referrers/(?P<ref>[^/]+)$"),
        {"GET": listing.referrers},
    ),
]


def _not_found(what: str) -> RegistryError:
    return RegistryError("NOT_FOUND", f"no such endpoint: {what[:120]}")


async def dispatch_v2(
    request: web.Request, ctx: AppContext, route: Route, rest: str
) -> web.StreamResponse:
    """`rest` is the path after /v2, starting with '/'."""
    base = route.external_url.rstrip("/") + route.prefix if route.external_url else route.prefix
    if rest == "/_catalog":
        if request.method not in ("GET", "HEAD"):
            raise RegistryError("UNSUPPORTED", "the catalog is read-only", status=405)
        return await listing.catalog(request, ctx, route.repository, base)
    path = rest[1:]
    for marker, pattern, handlers in _PATTERNS:
        if marker not in path:
            continue
        m = pattern.match(path)
        if m is None:
            continue
        handler = handlers.get(request.method)
        if handler is None:
            raise RegistryError(
                "UNSUPPORTED", f"{request.method} is not supported here", status=405
            )
        url_name = unquote(m.group("name"))
        call = await _call(request, ctx, route, url_name)
        ref = m.groupdict().get("ref")
        if ref is None:
            return await handler(call)
        return await handler(call, unquote(ref))
    raise _not_found(rest)


async def _call(request: web.Request, ctx: AppContext, route: Route, url_name: str) -> V2Call:
    check_name(url_name)
    if route.repository is not None:
        repo = await repository_named(ctx, route.repository)
        return V2Call(request, ctx, repo, url_name, url_name, route.prefix, route.external_url)
    repo_name, _, image = url_name.partition("/")
    routed: Repository | None = await ctx.repository(repo_name)
    if routed is None or not routed.config.path_routing or not image:
        message = (
            f"no repository {repo_name!r} with path routing on this host; address images "
            "as <host>/<repository>/<image>"
        )
        if not (image and ctx.routes.conceal and concealable(repo_name)):
            raise RegistryError("NAME_UNKNOWN", message)
        routed = MissingRepository(repo_name, message)  # refused like a foreign one
    return V2Call(
        request, ctx, routed, image, url_name, route.prefix, route.external_url, shared=True
    )
