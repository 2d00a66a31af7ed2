"""Tags list, catalog and referrers, with the spec's `n` / `last` pagination."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from portway.http.concealed import repository_named
from portway.http.context import AppContext
from portway.http.v2.call import V2Call, query_int
from portway.oci import mediatypes as mt
from portway.oci.digest import Digest

MAX_PAGE = 10000


def _json(doc: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _page_size(request: web.Request) -> int | None:
    n = query_int(request, "n")
    return None if n is None else min(n, MAX_PAGE)


def _page(base: str, n: int | None, items: list[str]) -> tuple[list[str], dict[str, str]]:
    """Cut a page of `n` from `items` (fetched with one extra, to know whether more follow);
    a `Link` to the next page only when there is one."""
    if n is None or len(items) <= n:
        return items, {}
    items = items[:n]
    return items, {"Link": f'<{base}?{urlencode({"n": n, "last": items[-1]})}>; rel="next"'}


async def tags(call: V2Call) -> web.StreamResponse:
    await call.authorize("pull")
    n = _page_size(call.request)
    last = call.request.query.get("last")
    if n == 0:
        await call.repo.list_tags(call.image, None, 1)  # NAME_UNKNOWN still applies
        return _json({"name": call.url_name, "tags": []})
    found = await call.repo.list_tags(call.image, last, None if n is None else n + 1)
    names, headers = _page(call.url("/tags/list"), n, found)
    return _json({"name": call.url_name, "tags": names}, headers)


async def referrers(call: V2Call, digest_text: str) -> web.StreamResponse:
    await call.authorize("pull")
    digest = Digest.parse(digest_text)
    artifact_type = call.request.query.get("artifactType") or None
    entries = await call.repo.referrers(call.image, digest, artifact_type)
    headers = {"Content-Type": mt.OCI_INDEX}
    if artifact_type:
        headers["OCI-Filters-Applied"] = "artifactType"
    body = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    return web.Response(body=json.dumps(body).encode(), headers=headers)


async def catalog(
    request: web.Request, ctx: AppContext, repository: str | None, base: str
) -> web.StreamResponse:
    """One repository's images, or on a shared host every path-routed repository's images
    as `<repo>/<image>` — only what the caller may browse."""
    await ctx.authorizer.authorize(request, repository, None, ("catalog",))
    n = _page_size(request)
    last = request.query.get("last")
    names: list[str]
    want_total = None if n is None else n + 1  # one extra tells whether a next page exists
    if n == 0:
        names = []
    elif repository is not None:
        names = await (await repository_named(ctx, repository)).catalog(last, want_total)
    else:
        names = await ctx.catalog.names(
            lambda name: ctx.authorizer.visible(request, name), last, want_total
        )
    names, headers = _page(f"{base}/v2/_catalog", n or None, names)
    return _json({"repositories": names}, headers)
