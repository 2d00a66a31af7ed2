"""Read-only queries of the admin API: tags with their digests and times, untagged manifests,
components (image:tag) across a repository, manifest bodies by digest. No cache here; the
services above (repos/browse.py) decide what to keep."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, and_, func, or_, select, tuple_

from portway.db.schema import manifests, tags


@dataclass(frozen=True, slots=True)
class TagRow:
    image: str
    name: str
    digest: str
    updated: float


@dataclass(frozen=True, slots=True)
class UntaggedRow:
    digest: str
    media_type: str
    created: float


class BrowseQueries:
    def __init__(self, read_engine: Engine) -> None:
        self.engine = read_engine

    def tag_fingerprint(self, repo_id: int, image: str) -> tuple[int, float]:
        """(tags, newest change): moves when a tag of the image is added, moved or removed."""
        stmt = select(func.count(), func.max(tags.c.updated)).where(
            tags.c.repo_id == repo_id, tags.c.image == image
        )
        with self.engine.connect() as conn:
            count, newest = conn.execute(stmt).one()
        return int(count), float(newest or 0.0)

    def tags(self, repo_id: int, image: str) -> list[TagRow]:
        stmt = select(tags.c.name, tags.c.digest, tags.c.updated).where(
            tags.c.repo_id == repo_id, tags.c.image == image
        )
        with self.engine.connect() as conn:
            return [TagRow(image, r[0], r[1], r[2]) for r in conn.execute(stmt)]

    def tags_after(
        self, repo_id: int, image: str, after: str | None, limit: int, descending: bool
    ) -> list[TagRow]:
        """Tags in name order from the primary key (no sort in memory)."""
        stmt = select(tags.c.name, tags.c.digest, tags.c.updated).where(
            tags.c.repo_id == repo_id, tags.c.image == image
        )
        if after is not None:
            stmt = stmt.where(tags.c.name < after if descending else tags.c.name > after)
        stmt = stmt.order_by(tags.c.name.desc() if descending else tags.c.name).limit(limit)
        with self.engine.connect() as conn:
            return [TagRow(image, r[0], r[1], r[2]) for r in conn.execute(stmt)]

    def untagged(self, repo_id: int, image: str) -> list[UntaggedRow]:
        """Manifests of the image no tag points at (an index's platforms included)."""
        tagged = select(tags.c.digest).where(tags.c.repo_id == repo_id, tags.c.image == image)
        stmt = (
            select(manifests.c.digest, manifests.c.media_type, manifests.c.created)
            .where(
                manifests.c.repo_id == repo_id,
                manifests.c.image == image,
                manifests.c.digest.not_in(tagged),
            )
            .order_by(manifests.c.digest)
        )
        with self.engine.connect() as conn:
            return [UntaggedRow(r[0], r[1], r[2]) for r in conn.execute(stmt)]

    def components(
        self,
        repo_id: int,
        after: tuple[str, str] | None,
        limit: int,
        image: str | None = None,
        name_like: str | None = None,
        tag_like: str | None = None,
    ) -> list[TagRow]:
        """Tags across the repository in (image, tag) order, after `after`."""
        stmt = select(tags.c.image, tags.c.name, tags.c.digest, tags.c.updated).where(
            tags.c.repo_id == repo_id
        )
        if image is not None:
            stmt = stmt.where(tags.c.image == image)
        if name_like is not None:
            stmt = stmt.where(tags.c.image.like(name_like, escape="\\"))
        if tag_like is not None:
            stmt = stmt.where(tags.c.name.like(tag_like, escape="\\"))
        if after is not None:
            stmt = stmt.where(
                or_(
                    tags.c.image > after[0],
                    and_(tags.c.image == after[0], tags.c.name > after[1]),
                )
            )
        stmt = stmt.order_by(tags.c.image, tags.c.name).limit(limit)
        with self.engine.connect() as conn:
            return [TagRow(r[0], r[1], r[2], r[3]) for r in conn.execute(stmt)]

    def bodies(
        self, repo_id: int, image: str, digests: Sequence[str]
    ) -> dict[str, tuple[str, bytes]]:
        """digest -> (media type, body) for the digests stored in the image."""
        out: dict[str, tuple[str, bytes]] = {}
        wanted = list(dict.fromkeys(digests))
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                stmt = select(manifests.c.digest, manifests.c.media_type, manifests.c.body).where(
                    manifests.c.repo_id == repo_id,
                    manifests.c.image == image,
                    manifests.c.digest.in_(chunk),
                )
                for digest, media_type, body in conn.execute(stmt):
                    out[digest] = (media_type, bytes(body))
        return out

    def many_sizes(
        self, repo_id: int, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, int]]:
        """(image, digest) -> (media type, manifest size), for a page of components."""
        out: dict[tuple[str, str], tuple[str, int]] = {}
        if not keys:
            return out
        stmt = select(
            manifests.c.image,
            manifests.c.digest,
            manifests.c.media_type,
            func.length(manifests.c.body),
        ).where(
            manifests.c.repo_id == repo_id,
            tuple_(manifests.c.image, manifests.c.digest).in_(list(dict.fromkeys(keys))),
        )
        with self.engine.connect() as conn:
            for image, digest, media_type, size in conn.execute(stmt):
                out[(image, digest)] = (media_type, int(size))
        return out
