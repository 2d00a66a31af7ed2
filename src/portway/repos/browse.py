"""Tags of an image, paged by cursor and sorted by name, semantic version, push time or size,
for the admin API (and the web UI to come). At 100,000 tags a page must stay well under 100 ms:

- by name, straight from the tags' primary key (keyset paging, nothing sorted in memory);
- by version, time or size, from the image's whole tag list sorted once and kept while the
  image's tag fingerprint (count, newest change: one indexed aggregate) stays the same;
- sizes (config and layers of an image manifest; an index's platforms) are worked out once per
  digest and kept: a manifest never changes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from portway.db.browse import BrowseQueries, TagRow

Sort = Literal["name", "semver", "pushed", "size"]
SORTS: tuple[Sort, ...] = ("name", "semver", "pushed", "size")
LISTS_KEPT = 32
SIZES_KEPT = 500_000

_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?"
    r"(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)


class CursorError(ValueError):
    """A cursor this listing did not hand out."""


def semver_key(tag: str) -> tuple[Any, ...]:
    """Versions first, in semantic-version order (a pre-release before its release), then
    every other tag; ties and the rest by name."""
    m = _SEMVER.match(tag)
    if m is None:
        return (1, 0, 0, 0, 0, ())
    major, minor, patch, pre = m.groups()
    ids: tuple[tuple[int, int, str], ...] = ()
    if pre:
        ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (0, int(major), int(minor or 0), int(patch or 0), 0 if pre else 1, ids)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def encode_cursor(key: Any, name: str) -> str:
    raw = json.dumps([key, name], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Any, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key, name = json.loads(raw)
    except (ValueError, binascii.Error, TypeError) as exc:
        raise CursorError("not a cursor this listing handed out") from exc
    if not isinstance(name, str):
        raise CursorError("not a cursor this listing handed out")
    return _tuples(key), name


def manifest_size(body: bytes, children: dict[str, int] | None = None) -> int:
    """Bytes a pull fetches: an image manifest's config and layers; an index's platforms."""
    try:
        doc = json.loads(body)
    except ValueError:
        return len(body)
    if not isinstance(doc, dict):
        return len(body)
    total = len(body)
    if isinstance(doc.get("layers"), list):
        parts = [doc.get("config") or {}, *doc["layers"]]
        total += sum(int(p.get("size") or 0) for p in parts if isinstance(p, dict))
    elif isinstance(doc.get("manifests"), list):
        for child in doc["manifests"]:
            if isinstance(child, dict):
                known = (children or {}).get(str(child.get("digest")))
                total += known if known is not None else int(child.get("size") or 0)
    return total


@dataclass(frozen=True, slots=True)
class TagItem:
    name: str
    digest: str
    pushed: float
    size: int | None


@dataclass(frozen=True, slots=True)
class TagPage:
    items: list[TagItem]
    next_cursor: str | None
    total: int


Kept = tuple[str, str, float]
"""A kept tag: (name, digest, updated). Plain tuples of strings and floats, which Python's
garbage collector stops tracking: three sorted lists of 100,000 dataclass rows made each of its
full passes walk 300,000 more objects (0.3-1.8 s on a loaded 2-core machine)."""


class TagBrowser:
    def __init__(self, queries: BrowseQueries) -> None:
        self.queries = queries
        self._lists: OrderedDict[tuple[int, str, Sort], tuple[object, list[Any], list[Kept]]]
        self._lists = OrderedDict()
        self._sizes: dict[str, int] = {}

    def sizes(self, repo_id: int, image: str, digests: list[str]) -> dict[str, int]:
        missing = [d for d in dict.fromkeys(digests) if d not in self._sizes]
        if missing:
            bodies = self.queries.bodies(repo_id, image, missing)
            # An index's platforms first, so its size can add theirs up.
            child_digests: list[str] = []
            for _media, body in bodies.values():
                if b'"manifests"' in body:
                    try:
                        doc = json.loads(body)
                        child_digests += [str(c.get("digest")) for c in doc.get("manifests", [])]
                    except (ValueError, AttributeError, TypeError):
                        pass
            children = {}
            if child_digests:
                for digest, (_m, body) in self.queries.bodies(
                    repo_id, image, child_digests
                ).items():
                    children[digest] = manifest_size(body)
            if len(self._sizes) > SIZES_KEPT:
                self._sizes.clear()
            for digest, (_media, body) in bodies.items():
                self._sizes[digest] = manifest_size(body, children)
        return {d: self._sizes[d] for d in digests if d in self._sizes}

    def _sorted(self, repo_id: int, image: str, sort: Sort) -> tuple[list[Any], list[Kept]]:
        fingerprint = self.queries.tag_fingerprint(repo_id, image)
        key = (repo_id, image, sort)
        kept = self._lists.get(key)
        if kept is not None and kept[0] == fingerprint:
            self._lists.move_to_end(key)
            return kept[1], kept[2]
        rows = self.queries.tags(repo_id, image)
        decorated: list[tuple[tuple[Any, str], TagRow]]
        if sort == "semver":
            decorated = [((semver_key(r.name), r.name), r) for r in rows]
        elif sort == "pushed":
            decorated = [((r.updated, r.name), r) for r in rows]
        else:
            sizes = self.sizes(repo_id, image, [r.digest for r in rows])
            decorated = [((sizes.get(r.digest, 0), r.name), r) for r in rows]
        decorated.sort(key=lambda pair: pair[0])
        keys = [k for k, _ in decorated]
        ordered: list[Kept] = [(r.name, r.digest, r.updated) for _, r in decorated]
        self._lists[key] = (fingerprint, keys, ordered)
        while len(self._lists) > LISTS_KEPT:
            self._lists.popitem(last=False)
        return keys, ordered

    def page(
        self,
        repo_id: int,
        image: str,
        sort: Sort = "name",
        descending: bool = False,
        cursor: str | None = None,
        limit: int = 100,
    ) -> TagPage:
        after = decode_cursor(cursor) if cursor else None
        if sort == "name":
            total = self.queries.tag_fingerprint(repo_id, image)[0]
            rows = self.queries.tags_after(
                repo_id, image, after[1] if after else None, limit + 1, descending
            )
            more = len(rows) > limit
            kept: list[Kept] = [(r.name, r.digest, r.updated) for r in rows[:limit]]
            keys: list[Any] = [r[0] for r in kept]
        else:
            all_keys, ordered = self._sorted(repo_id, image, sort)
            total = len(ordered)
            if after is not None and (not all_keys or type(after[0]) is not type(all_keys[0][0])):
                raise CursorError("this cursor belongs to another sort order")
            if descending:
                end = bisect_left(all_keys, after) if after else len(ordered)
                start = max(0, end - limit)
                kept = ordered[start:end][::-1]
                keys = [k[0] for k in all_keys[start:end][::-1]]
                more = start > 0
            else:
                start = bisect_right(all_keys, after) if after else 0
                kept = ordered[start : start + limit]
                keys = [k[0] for k in all_keys[start : start + limit]]
                more = start + limit < len(ordered)
        sizes = self.sizes(repo_id, image, [r[1] for r in kept])
        items = [TagItem(name, digest, at, sizes.get(digest)) for name, digest, at in kept]
        next_cursor = encode_cursor(keys[-1], kept[-1][0]) if more and kept else None
        return TagPage(items, next_cursor, total)
