"""Bulk tag delete with a preview, for the admin API and the web UI alike.

`choose` says which tags of an image a request names (a list of names, a glob over names, or
both); the preview is that list. `delete` removes exactly the tags it is given, each only if it
still points at the digest the preview showed (a tag moved since is kept and counted apart),
through the repository's own tag delete, so what they held becomes garbage for `portway gc`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from portway.db.browse import BrowseQueries, TagRow
from portway.oci.errors import RegistryError
from portway.repos.base import Repository

MAX_TAGS = 10_000


@dataclass
class BulkResult:
    deleted: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)  # the tag points elsewhere now: kept
    gone: list[str] = field(default_factory=list)  # deleted by someone else meanwhile


def choose(rows: Iterable[TagRow], names: Collection[str], match: str | None) -> list[TagRow]:
    """The rows named in `names` or matching the glob `match`, by name."""
    wanted = set(names)
    chosen = [r for r in rows if r.name in wanted or (match and fnmatch.fnmatchcase(r.name, match))]
    chosen.sort(key=lambda r: r.name)
    return chosen


def fingerprint(rows: Iterable[TagRow]) -> str:
    """Names the exact set a preview showed (tags and their digests): a confirmation carries
    it, and a set that changed since is shown again instead of deleted."""
    digest = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r.name):
        digest.update(f"{r.name} {r.digest}\n".encode())
    return digest.hexdigest()[:32]


class BulkTags:
    def __init__(self, queries: BrowseQueries) -> None:
        self.queries = queries

    def preview(
        self, repo_id: int, image: str, names: Collection[str], match: str | None
    ) -> list[TagRow]:
        if match and not names:  # only the names the pattern's literal start allows
            start = re.split(r"[*?\[]", match, maxsplit=1)[0]
            return choose(self.queries.tags_starting(repo_id, image, start), (), match)
        return choose(self.queries.tags(repo_id, image), names, match)

    async def delete(
        self, repo: Repository, repo_id: int, image: str, expected: Mapping[str, str | None]
    ) -> BulkResult:
        """Delete the tags of `expected` (tag -> the digest the preview showed, or None for
        any digest)."""
        rows = await self.queries.run(self.queries.tags, repo_id, image)  # off the loop on PG
        current = {r.name: r.digest for r in rows}
        out = BulkResult()
        writable = repo.writable()
        for tag in sorted(expected):
            digest = expected[tag]
            if tag not in current:
                out.gone.append(tag)
                continue
            if digest is not None and current[tag] != digest:
                out.moved.append(tag)
                continue
            try:
                await writable.delete_manifest(image, tag)
            except RegistryError as exc:
                if exc.status != 404:
                    raise
                out.gone.append(tag)
                continue
            out.deleted.append(tag)
        return out
