"""Browse pages: repositories, a repository's images, an image's tags, one manifest, and a
tag delete (a confirmation page, then a POST)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.oci.mediatypes import MANIFEST_TYPES
from portway.repos.base import Repository
from portway.repos.browse import SORTS, CursorError, Sort
from portway.ui.manifest_view import describe
from portway.ui.pull import accesses, commands
from portway.ui.tagpages import tag_page
from portway.ui.web import Page, Refusal, page

IMAGES_PAGE = 100


def _repository(p: Page, name: str, action: str = "browse") -> Repository:
    repo = p.ctx.repos.get(name)
    if repo is None or not p.may(name, "browse"):
        raise Refusal(404, f"no repository {name!r}")
    if not p.may(name, action):
        raise Refusal(403, f"this needs the {action} privilege on {name!r}")
    return repo


def _arg(p: Page, name: str) -> str:
    value = p.request.query.get(name, "")
    if not value:
        raise Refusal(400, f"{name} is missing")
    return value


@page
async def repositories(p: Page) -> web.StreamResponse:
    rows = [
        {"name": d.name, "type": d.type, "path_routing": d.path_routing}
        for d in sorted(p.ctx.snapshot.definitions, key=lambda d: d.name)
        if p.may(d.name, "browse")
    ]
    return p.render("repositories.html", rows=rows)


@page
async def images(p: Page) -> web.StreamResponse:
    name = p.request.match_info["repo"]
    repo = _repository(p, name)
    last = p.request.query.get("last") or None
    found = await repo.catalog(last, IMAGES_PAGE + 1)
    more = len(found) > IMAGES_PAGE
    found = found[:IMAGES_PAGE]
    return p.render("images.html", repo=name, kind=repo.kind, images=found,
                    next_last=found[-1] if more else None)  # fmt: skip


@page
async def tags(p: Page) -> web.StreamResponse:
    name, image = p.request.match_info["repo"], _arg(p, "image")
    repo = _repository(p, name)
    repo_id = getattr(repo, "repo_id", None)
    if repo_id is None:
        raise Refusal(400, f"{name!r} is a group: browse its members")
    q = p.request.query
    sort = q.get("sort", "name")
    if sort not in SORTS:
        raise Refusal(400, f"sort: one of {', '.join(SORTS)}")
    descending = q.get("order", "asc") == "desc"
    text = q.get("q", "").strip()[:200]
    try:
        offset = max(0, int(q.get("offset", "0") or 0))
        view = await p.services.browse.run(
            tag_page, p.services.tags, int(repo_id), image, sort_of(sort), descending,
            q.get("cursor") or None, text, offset,
        )  # fmt: skip
    except (CursorError, ValueError):
        raise Refusal(400, "this page link is stale: start from the first page") from None
    base: dict[str, str] = {"image": image, "sort": sort, "order": q.get("order", "asc")}
    if text:
        base["q"] = text
    nxt = None
    if view.next_cursor:
        nxt = "?" + urlencode({**base, "cursor": view.next_cursor})
    elif view.next_offset is not None:
        nxt = "?" + urlencode({**base, "offset": str(view.next_offset)})
    return p.render("tags.html", repo=name, image=image, view=view, sort=sort,
                    order=base["order"], q=text, next=nxt, sorts=SORTS,
                    may_delete=p.may(name, "delete"))  # fmt: skip


def sort_of(text: str) -> Sort:
    for s in SORTS:
        if s == text:
            return s
    raise ValueError(text)


@page
async def manifest(p: Page) -> web.StreamResponse:
    name, image, ref = p.request.match_info["repo"], _arg(p, "image"), _arg(p, "ref")
    repo = _repository(p, name, "read")
    try:
        found = await repo.get_manifest(image, ref, sorted(MANIFEST_TYPES))
    except RegistryError as exc:
        if exc.status >= 500:
            raise
        raise Refusal(exc.status, exc.message) from None
    view = describe(found.digest, found.media_type, found.body)
    referrers: list[dict[str, Any]] = []
    try:
        referrers = await repo.referrers(image, Digest.parse(found.digest), None)
    except RegistryError:
        referrers = []
    definition = next((d for d in p.ctx.snapshot.definitions if d.name == name), None)
    methods = accesses(p.ctx.registry.settings, name, bool(definition and definition.path_routing),
                       p.request.host)  # fmt: skip
    pulls = [(a, commands(a, image, ref)) for a in methods]
    return p.render("manifest.html", repo=name, image=image, ref=ref, view=view,
                    referrers=referrers, pulls=pulls,
                    may_delete=p.may(name, "delete") and not ref.startswith("sha256:"))  # fmt: skip


@page
async def confirm_delete(p: Page) -> web.StreamResponse:
    name, image, tag = p.request.match_info["repo"], _arg(p, "image"), _arg(p, "tag")
    _repository(p, name, "delete")
    return p.render("delete.html", repo=name, image=image, tag=tag)


@page
async def delete_tag(p: Page) -> web.StreamResponse:
    name = p.request.match_info["repo"]
    form = await p.form()
    image, tag = form.get("image", ""), form.get("tag", "")
    repo = _repository(p, name, "delete")
    if not image or not tag or tag.startswith("sha256:"):
        raise Refusal(400, "name an image and a tag")
    try:
        await repo.writable().delete_manifest(image, tag)
    except RegistryError as exc:
        if exc.status >= 500:
            raise
        raise Refusal(exc.status, exc.message) from None
    p.ctx.authorizer.audit(p.request, "tag.delete", name, {"image": image, "tag": tag})
    raise web.HTTPSeeOther(f"/ui/r/{name}/tags?" + urlencode({"image": image, "deleted": tag}))
