"""/v1/_ping and /v1/search (what `docker search` calls), per repository or across the
path-routed repositories of a shared host."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from portway.http.concealed import repository_named
from portway.http.context import AppContext
from portway.http.routing import Route
from portway.oci.errors import RegistryError
from portway.repos.search import page_of

MAX_RESULTS = 100  # page size cap
ALL_RESULTS = 10_000  # what one repository contributes to a merged search
log = logging.getLogger("portway.http")


def _int(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise RegistryError("PAGINATION_NUMBER_INVALID", f"{key} must be a positive integer")
    return max(low, min(int(raw), high))


async def handle_v1(
    request: web.Request, ctx: AppContext, route: Route, rest: str
) -> web.StreamResponse:
    if rest in ("/_ping", "/_ping/"):
        return web.Response(body=b"true", content_type="application/json")
    if rest not in ("/search", "/search/"):
        raise RegistryError("NOT_FOUND", "only /v1/_ping and /v1/search exist here")
    if request.method not in ("GET", "HEAD"):
        raise RegistryError("UNSUPPORTED", status=405)
    query = request.query.get("q", "")
    n = _int(request, "n", 25, 1, MAX_RESULTS)
    page = _int(request, "page", 1, 1, 100000)
    await _ask_for_credentials(request, ctx, route)
    if route.repository is not None:
        if ctx.authorizer.visible(request, route.repository):
            body = await _search_one(ctx, route.repository, query, n, page)
        else:
            body = page_of(query, [], n, page)  # no existence leak: an empty answer
    else:
        body = await _search_shared(request, ctx, query, n, page)
    return web.Response(body=json.dumps(body).encode(), content_type="application/json")


async def _ask_for_credentials(request: web.Request, ctx: AppContext, route: Route) -> None:
    """A search without credentials that would hide a repository gets the login challenge,
    not a partial answer: podman asks /v1/search without credentials and, only when that
    fails, lists the catalog with them (docker sends its token from the start)."""
    if request.headers.get("Authorization"):
        # Who is asking is decided now, off the event loop (a password check), not in visible().
        await ctx.authorizer.authorize(request, route.repository, None, ())
        return
    await ctx.authorizer.identify(request, route.repository)  # anonymous: read off the loop
    if route.repository is not None:
        reach = [route.repository]
    else:
        reach = [r for r in ctx.routes.path_routed() if ctx.repos[r].config.v1_enabled]
    if all(ctx.authorizer.visible(request, name) for name in reach):
        return
    await ctx.authorizer.authorize(request, route.repository, None, ("catalog",))


async def _search_one(
    ctx: AppContext, repo_name: str, query: str, n: int, page: int
) -> dict[str, Any]:
    """One repository answers its own page (its `num_results` counts every match)."""
    repo = await repository_named(ctx, repo_name)
    if not repo.config.v1_enabled:
        raise RegistryError(
            "UNSUPPORTED", f"search is turned off for repository {repo_name!r}", status=404
        )
    found = await repo.search(query, n, page)
    return found if found is not None else page_of(query, [], n, page)


async def _search_shared(
    request: web.Request, ctx: AppContext, query: str, n: int, page: int
) -> dict[str, Any]:
    """A shared host: every path-routed repository the caller may see, names prefixed with
    the repository (`<repo>/<image>`, what a client pulls and `docker search` shows there),
    the term matched against that whole name, paged together."""
    results: list[dict[str, Any]] = []
    for repo_name in ctx.routes.path_routed():
        repo = ctx.repos[repo_name]
        if not repo.config.v1_enabled or not ctx.authorizer.visible(request, repo_name):
            continue
        seen: set[str] = set()
        for term, prefix in _terms_inside(repo_name, query):
            try:
                found = await repo.search(term, ALL_RESULTS, 1)
            except RegistryError as err:
                log.warning("search in %s: %s", repo_name, err.message)
                break
            for entry in found["results"] if found else []:
                image = str(entry["name"])
                if image in seen or not image.lower().startswith(prefix):
                    continue
                seen.add(image)
                results.append({**entry, "name": f"{repo_name}/{image}"})
    return page_of(query, results, n, page)


def _terms_inside(repo_name: str, query: str) -> list[tuple[str, str]]:
    """What to ask one repository so that every image whose shared-host name
    `<repo_name>/<image>` contains `query` is found: (term, required image-name prefix).

    `docker-hosted` or `hosted/` names every image of `docker-hosted`; `hosted/alp` the
    images starting with `alp`; any term also matches inside image names (and descriptions).
    """
    term = query.strip().lower()
    if term in repo_name + "/":
        return [("", "")]
    terms = [(term, "")]
    head, slash, tail = term.partition("/")
    if slash and repo_name.endswith(head):
        terms.append((tail, tail))
    return terms
