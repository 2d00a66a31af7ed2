"""Nexus's component, asset and search endpoints over Docker content.

A component is a tagged image (`name` the image, `version` the tag); its one asset is the
manifest the tag points at (`v2/<image>/manifests/<tag>`). Pages hold up to `PAGE` items and a
`continuationToken` for the next one (null on the last), as Nexus does.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from portway.api.problems import Problem
from portway.api.routing import Call, Operation, Param, json_response, no_content
from portway.db.browse import TagRow

PAGE = 50
REPOSITORY = Param("repository", "repository name", required=True)
TOKEN = Param("continuationToken", "from the previous page")


class AssetXO(BaseModel):
    id: str
    repository: str
    format: str = "docker"
    path: str
    downloadUrl: str
    contentType: str | None = None
    checksum: dict[str, str] = {}
    lastModified: str | None = None
    fileSize: int | None = None


class ComponentXO(BaseModel):
    id: str
    repository: str
    format: str = "docker"
    group: str | None = None
    name: str
    version: str
    assets: list[AssetXO] = []


class PageComponentXO(BaseModel):
    items: list[ComponentXO]
    continuationToken: str | None = None


class PageAssetXO(BaseModel):
    items: list[AssetXO]
    continuationToken: str | None = None


def _b64(value: list[str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _unb64(value: str, parts: int) -> list[str]:
    try:
        out = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, binascii.Error):
        raise Problem(404, "no such component or asset") from None
    if not isinstance(out, list) or len(out) != parts or not all(isinstance(v, str) for v in out):
        raise Problem(404, "no such component or asset")
    return out


def _repo_id(call: Call, name: str | None) -> int:
    if not name:
        raise Problem(400, "repository: required")
    repo = call.ctx.repos.get(name)
    if repo is None or not call.may(name, "browse"):
        raise Problem(404, f"no repository {name!r}")
    repo_id = getattr(repo, "repo_id", None)
    if repo_id is None:
        raise Problem(400, f"repository {name!r} is a group: list its members")
    return int(repo_id)


def _asset(call: Call, repo: str, row: TagRow, body: tuple[str, int] | None) -> AssetXO:
    path = f"v2/{row.image}/manifests/{row.name}"
    when = datetime.fromtimestamp(row.updated, UTC).isoformat(timespec="milliseconds")
    return AssetXO(
        id=_b64(["a", repo, row.image, row.name]),
        repository=repo,
        path=path,
        downloadUrl=f"{call.base_url()}/repository/{repo}/{path}",
        contentType=body[0] if body else None,
        checksum={"sha256": row.digest.removeprefix("sha256:")},
        lastModified=when.replace("+00:00", "Z"),
        fileSize=body[1] if body else None,
    )


async def _page(call: Call, repo: str, repo_id: int, rows: list[TagRow]) -> list[ComponentXO]:
    browse = call.services.browse
    bodies = await browse.run(browse.many_sizes, repo_id, [(r.image, r.digest) for r in rows])
    return [
        ComponentXO(
            id=_b64(["c", repo, r.image, r.name]),
            repository=repo,
            name=r.image,
            version=r.name,
            assets=[_asset(call, repo, r, bodies.get((r.image, r.digest)))],
        )
        for r in rows
    ]


def _after(call: Call, repo: str) -> tuple[str, str] | None:
    token = call.query("continuationToken")
    if not token:
        return None
    kind, token_repo, image, tag = _unb64(token, 4)
    if kind != "t" or token_repo != repo:
        raise Problem(400, "continuationToken: not from this listing")
    return image, tag


async def list_components(call: Call) -> web.StreamResponse:
    repo = call.query("repository") or ""
    repo_id = _repo_id(call, repo)
    browse = call.services.browse
    rows = await browse.run(browse.components, repo_id, _after(call, repo), PAGE + 1)
    token = (
        _b64(["t", repo, rows[PAGE - 1].image, rows[PAGE - 1].name]) if len(rows) > PAGE else None
    )
    items = await _page(call, repo, repo_id, rows[:PAGE])
    return json_response(PageComponentXO(items=items, continuationToken=token).model_dump())


async def list_assets(call: Call) -> web.StreamResponse:
    repo = call.query("repository") or ""
    repo_id = _repo_id(call, repo)
    browse = call.services.browse
    rows = await browse.run(browse.components, repo_id, _after(call, repo), PAGE + 1)
    token = (
        _b64(["t", repo, rows[PAGE - 1].image, rows[PAGE - 1].name]) if len(rows) > PAGE else None
    )
    items = [c.assets[0] for c in await _page(call, repo, repo_id, rows[:PAGE])]
    return json_response(PageAssetXO(items=items, continuationToken=token).model_dump())


async def _one(call: Call, kind: str) -> tuple[str, int, TagRow]:
    found_kind, repo, image, tag = _unb64(call.path("id"), 4)
    if found_kind != kind:
        raise Problem(404, "no such component or asset")
    try:
        repo_id = _repo_id(call, repo)
    except Problem:
        raise Problem(404, "no such component or asset") from None
    browse = call.services.browse
    rows = await browse.run(
        functools.partial(browse.components, repo_id, None, 1, image=image, tag_like=_like(tag))
    )
    if not rows or rows[0].name != tag:
        raise Problem(404, "no such component or asset")
    return repo, repo_id, rows[0]


async def get_component(call: Call) -> web.StreamResponse:
    repo, repo_id, row = await _one(call, "c")
    return json_response((await _page(call, repo, repo_id, [row]))[0].model_dump())


async def get_asset(call: Call) -> web.StreamResponse:
    repo, repo_id, row = await _one(call, "a")
    return json_response((await _page(call, repo, repo_id, [row]))[0].assets[0].model_dump())


async def _delete(call: Call, kind: str) -> web.StreamResponse:
    repo, _, row = await _one(call, kind)
    if not call.may(repo, "delete"):
        raise Problem(403, f"deleting in {repo!r} needs the delete privilege")
    await call.ctx.repos[repo].writable().delete_manifest(row.image, row.name)
    call.ctx.authorizer.audit(
        call.request, "tag.delete", repo, {"image": row.image, "tag": row.name}
    )
    return no_content()


async def delete_component(call: Call) -> web.StreamResponse:
    return await _delete(call, "c")


async def delete_asset(call: Call) -> web.StreamResponse:
    return await _delete(call, "a")


def _like(glob: str) -> str:
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


async def search(call: Call) -> web.StreamResponse:
    """Tagged images by `name` (image) and `version` (tag), `*` wildcards, across the
    repositories the caller may browse (or the one `repository` names)."""
    fmt = call.query("format")
    if fmt and fmt != "docker":
        return json_response(PageComponentXO(items=[]).model_dump())
    wanted = call.query("repository")
    names = sorted(
        d.name
        for d in call.ctx.snapshot.definitions
        if d.type != "group" and (wanted is None or d.name == wanted) and call.may(d.name, "browse")
    )
    token = call.query("continuationToken")
    start_repo, after = "", None
    if token:
        kind, start_repo, image, tag = _unb64(token, 4)
        if kind != "s":
            raise Problem(400, "continuationToken: not from this listing")
        after = (image, tag)
    name, version = call.query("name"), call.query("version")
    items: list[ComponentXO] = []
    next_token = None
    for repo in names:
        if repo < start_repo:
            continue
        repo_id = _repo_id(call, repo)
        want = PAGE + 1 - len(items)
        browse = call.services.browse
        rows = await browse.run(
            functools.partial(
                browse.components,
                repo_id,
                after if repo == start_repo else None,
                want,
                name_like=_like(name) if name else None,
                tag_like=_like(version) if version else None,
            )
        )
        if len(items) + len(rows) > PAGE:
            rows = rows[: PAGE - len(items)]
            items += await _page(call, repo, repo_id, rows)
            last = items[-1]
            next_token = _b64(["s", repo, last.name, last.version])
            break
        items += await _page(call, repo, repo_id, rows)
    return json_response(PageComponentXO(items=items, continuationToken=next_token).model_dump())


ID = Param("id", "component or asset id", required=True)
_PAGE_COMPONENTS: dict[int, tuple[Any, bool]] = {200: (PageComponentXO, False)}
OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/service/rest/v1/components",
        list_components,
        "Tagged images of a repository",
        "components",
        None,
        responses=_PAGE_COMPONENTS,
        query=(REPOSITORY, TOKEN),
    ),
    Operation(
        "GET",
        "/service/rest/v1/components/{id}",
        get_component,
        "One tagged image",
        "components",
        None,
        responses={200: (ComponentXO, False)},
    ),
    Operation(
        "DELETE",
        "/service/rest/v1/components/{id}",
        delete_component,
        "Delete the tag",
        "components",
        None,
        responses={204: (None, False)},
    ),
    Operation(
        "GET",
        "/service/rest/v1/assets",
        list_assets,
        "Manifests of a repository's tags",
        "assets",
        None,
        responses={200: (PageAssetXO, False)},
        query=(REPOSITORY, TOKEN),
    ),
    Operation(
        "GET",
        "/service/rest/v1/assets/{id}",
        get_asset,
        "One asset",
        "assets",
        None,
        responses={200: (AssetXO, False)},
    ),
    Operation(
        "DELETE",
        "/service/rest/v1/assets/{id}",
        delete_asset,
        "Delete the tag",
        "assets",
        None,
        responses={204: (None, False)},
    ),
    Operation(
        "GET",
        "/service/rest/v1/search",
        search,
        "Search tagged images",
        "search",
        None,
        responses=_PAGE_COMPONENTS,
        query=(
            Param("repository", "repository name"),
            Param("name", "image, * wildcards"),
            Param("version", "tag, * wildcards"),
            Param("format", "docker"),
            TOKEN,
        ),
    ),
]
