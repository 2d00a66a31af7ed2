"""One page of an image's tags for the UI: the admin API's keyset-paged listing
(repos/browse.py `TagBrowser.page`) when no filter is given; with a filter, the same kept
sorted list, narrowed to the names that contain the text and paged by position."""

from __future__ import annotations

from dataclasses import dataclass

from portway.repos.browse import Sort, TagBrowser, TagItem

PAGE = 50


@dataclass(frozen=True)
class TagView:
    items: list[TagItem]
    total: int
    next_cursor: str | None
    next_offset: int | None


def tag_page(
    tags: TagBrowser,
    repo_id: int,
    image: str,
    sort: Sort,
    descending: bool,
    cursor: str | None,
    text: str,
    offset: int = 0,
    limit: int = PAGE,
) -> TagView:
    if not text:
        found = tags.page(repo_id, image, sort, descending, cursor, limit)
        return TagView(found.items, found.total, found.next_cursor, None)
    # The name order is the one TagBrowser keeps no list for: push time's list, re-sorted.
    _keys, ordered = tags._sorted(repo_id, image, "pushed" if sort == "name" else sort)
    needle = text.lower()
    rows = [r for r in ordered if needle in r[0].lower()]
    if sort == "name":
        rows.sort(key=lambda r: r[0])
    if descending:
        rows.reverse()
    chosen = rows[offset : offset + limit]
    sizes = tags.sizes(repo_id, image, [r[1] for r in chosen])
    items = [TagItem(name, digest, at, sizes.get(digest)) for name, digest, at in chosen]
    more = offset + limit < len(rows)
    return TagView(items, len(rows), None, offset + limit if more else None)
