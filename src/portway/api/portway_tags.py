"""Tags of an image (`/api/v1/repositories/{name}/images/{image}/tags`): cursor paging,
sorted by name, semantic version, push time or size, or the image's untagged manifests; and a
bulk tag delete that previews what it would delete unless `preview` is false."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from portway.api.problems import Problem
from portway.api.routing import Call, Operation, Param, json_response
from portway.repos.browse import SORTS

BASE = "/api/v1/repositories/{name}/images/{image}"


class Tag(BaseModel):
    name: str | None
    digest: str
    pushed: float
    size: int | None


class TagList(BaseModel):
    items: list[Tag]
    total: int
    nextCursor: str | None = None


class TagDeletion(BaseModel):
    tags: list[str] = Field(default=[], max_length=10000, description="tag names")
    match: str | None = Field(default=None, description="a glob over tag names, e.g. 'pr-*'")
    preview: bool = Field(default=True, description="list what would go, delete nothing")


class TagDeletionAnswer(BaseModel):
    preview: bool
    tags: list[Tag]
    deleted: int


def _repo_id(call: Call, action: str) -> int:
    name = call.path("name")
    repo = call.ctx.repos.get(name)
    if repo is None or not call.may(name, "browse"):
        raise Problem(404, f"no repository {name!r}")
    if not call.may(name, action):
        raise Problem(403, f"this needs the {action} privilege on {name!r}")
    repo_id = getattr(repo, "repo_id", None)
    if repo_id is None:
        raise Problem(400, f"repository {name!r} is a group: ask its members")
    return int(repo_id)


async def list_tags(call: Call) -> web.StreamResponse:
    repo_id = _repo_id(call, "browse")
    image = call.path("image")
    sort = call.query("sort", "name")
    if sort not in SORTS:
        raise Problem(400, f"sort: one of {', '.join(SORTS)}")
    order = call.query("order", "asc")
    if order not in ("asc", "desc"):
        raise Problem(400, "order: asc or desc")
    try:
        limit = int(call.query("limit", "100") or "100")
    except ValueError:
        raise Problem(400, "limit: a number from 1 to 1000") from None
    if not 1 <= limit <= 1000:
        raise Problem(400, "limit: a number from 1 to 1000")
    if (call.query("untagged") or "").lower() in ("1", "true", "yes"):
        browse, tags = call.services.browse, call.services.tags
        rows = await browse.run(browse.untagged, repo_id, image)
        sizes = await browse.run(tags.sizes, repo_id, image, [r.digest for r in rows])
        items = [
            Tag(name=None, digest=r.digest, pushed=r.created, size=sizes.get(r.digest))
            for r in rows
        ]
        return json_response(TagList(items=items, total=len(items)).model_dump())
    page = await call.services.browse.run(
        call.services.tags.page,
        repo_id,
        image,
        sort,
        order == "desc",
        call.query("cursor") or None,
        limit,
    )
    items = [Tag(name=t.name, digest=t.digest, pushed=t.pushed, size=t.size) for t in page.items]
    return json_response(
        TagList(items=items, total=page.total, nextCursor=page.next_cursor).model_dump()
    )


async def delete_tags(call: Call) -> web.StreamResponse:
    body: TagDeletion = call.body
    repo_id = _repo_id(call, "browse" if body.preview else "delete")
    image, name = call.path("image"), call.path("name")
    if not body.tags and not body.match:
        raise Problem(400, "name the tags (tags) or a pattern (match)")
    chosen = await call.services.browse.run(
        call.services.bulk.preview, repo_id, image, body.tags, body.match
    )
    deleted = 0
    if not body.preview:
        expected: dict[str, str | None] = {r.name: None for r in chosen}
        result = await call.services.bulk.delete(call.ctx.repos[name], repo_id, image, expected)
        deleted = len(result.deleted)
        call.ctx.authorizer.audit(
            call.request, "tag.bulk_delete", name, {"image": image, "tags": str(deleted)}
        )
    items: list[Any] = [
        Tag(name=r.name, digest=r.digest, pushed=r.updated, size=None) for r in chosen
    ]
    return json_response(
        TagDeletionAnswer(preview=body.preview, tags=items, deleted=deleted).model_dump()
    )


OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        BASE + "/tags",
        list_tags,
        "Tags of an image, paged",
        "portway",
        None,
        responses={200: (TagList, False)},
        greedy=("image",),
        query=(
            Param("sort", "name, semver, pushed or size", {"type": "string", "enum": list(SORTS)}),
            Param("order", "asc or desc", {"type": "string", "enum": ["asc", "desc"]}),
            Param("cursor", "nextCursor of the previous page"),
            Param("limit", "1-1000", {"type": "integer", "minimum": 1, "maximum": 1000}),
            Param("untagged", "true: the manifests no tag points at", {"type": "boolean"}),
        ),
    ),
    Operation(
        "POST",
        BASE + "/tags/delete",
        delete_tags,
        "Delete many tags (preview first)",
        "portway",
        None,
        body=TagDeletion,
        responses={200: (TagDeletionAnswer, False)},
        greedy=("image",),
    ),
]
