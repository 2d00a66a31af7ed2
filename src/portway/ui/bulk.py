"""Bulk tag delete: choose an image's tags by a pattern, see exactly which would go, confirm,
delete (repos/bulk.py, what the admin API's `tags/delete` calls). The confirmation carries a
fingerprint of the previewed set: if a matching tag was pushed, moved or removed since, the
new set is shown again instead of deleted. The preview lists the first `PREVIEW_ROWS` tags by
name, and all of them on request: the count and the fingerprint always cover the whole set."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from portway.db.browse import TagRow
from portway.repos.bulk import MAX_TAGS, fingerprint
from portway.ui.browse import _arg, _repository
from portway.ui.web import Page, Refusal, page

PREVIEW_ROWS = 200  # listed at first; "Show all" lists every one (thousands take a while)


def _repo_id(p: Page, name: str, action: str) -> int:
    repo = _repository(p, name, action)
    repo_id = getattr(repo, "repo_id", None)
    if repo_id is None:
        raise Refusal(400, f"{name!r} is a group: delete in its members")
    return int(repo_id)


async def _rows(p: Page, repo_id: int, image: str, match: str) -> list[TagRow]:
    """The tags a pattern picks (the browse queries' thread on PostgreSQL)."""
    return await p.services.browse.run(p.services.bulk.preview, repo_id, image, (), match)


async def _preview(p: Page, name: str, image: str, match: str, status: int = 200,
                   changed: bool = False) -> web.Response:  # fmt: skip
    rows: list[TagRow] = []
    too_many = False
    if match:
        rows = await _rows(p, _repo_id(p, name, "delete"), image, match)
        too_many = len(rows) > MAX_TAGS
    listed = rows if p.request.query.get("all") == "1" else rows[:PREVIEW_ROWS]
    return p.render("bulk.html", status, repo=name, image=image, match=match, rows=rows,
                    listed=listed, too_many=too_many, limit=MAX_TAGS, changed=changed,
                    fingerprint=fingerprint(rows))  # fmt: skip


@page
async def bulk_form(p: Page) -> web.StreamResponse:
    name, image = p.request.match_info["repo"], _arg(p, "image")
    _repo_id(p, name, "delete")
    return await _preview(p, name, image, p.request.query.get("match", "").strip()[:200])


@page
async def bulk_delete(p: Page) -> web.StreamResponse:
    name = p.request.match_info["repo"]
    form = await p.form()
    image, match = form.get("image", ""), form.get("match", "").strip()
    if not image or not match:
        raise Refusal(400, "name an image and a pattern")
    repo_id = _repo_id(p, name, "delete")
    rows = await _rows(p, repo_id, image, match)
    if len(rows) > MAX_TAGS or fingerprint(rows) != form.get("fingerprint"):
        return await _preview(p, name, image, match, 409, changed=True)
    expected: dict[str, str | None] = {r.name: r.digest for r in rows}
    result = await p.services.bulk.delete(p.ctx.repos[name], repo_id, image, expected)
    p.ctx.authorizer.audit(p.request, "tag.bulk_delete", name,
                           {"image": image, "tags": str(len(result.deleted))})  # fmt: skip
    query = {"image": image, "bulk_deleted": str(len(result.deleted))}
    if result.moved:
        query["bulk_kept"] = str(len(result.moved))
    raise web.HTTPSeeOther(f"/ui/r/{name}/tags?" + urlencode(query))
