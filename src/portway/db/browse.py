"""Read-only queries of the admin API: tags with their digests and times, untagged manifests,
components (image:tag) across a repository, manifest bodies by digest. No cache here; the
services above (repos/browse.py) decide what to keep."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, Index, and_, func, or_, select, tuple_

from portway.db.dialect import dialect_for
from portway.db.schema import manifests, tags

# Tag listings read only this index (no table row per tag): the newest change of an image is
# one seek, push-time order is a range scan, a whole image's list is index-only.
LENGTHS_KEPT = 200_000  # (repository, image, digest) -> manifest length, for components
T = TypeVar("T")

Index("ix_tags_pushed", tags.c.repo_id, tags.c.image, tags.c.updated, tags.c.name, tags.c.digest)
# A tag pattern with a literal start across every image (Nexus search `version=pr-9*`): a
# range of this index, then the few matches sorted (revision 0010). On PostgreSQL the name is
# in byte order (`text_pattern_ops`, revision 0013), whatever the database's collation.
Index(
    "ix_tags_name",
    tags.c.repo_id,
    tags.c.name,
    tags.c.image,
    postgresql_ops={"name": "text_pattern_ops"},
)


def like_parts(pattern: str) -> tuple[str, str]:
    """A LIKE pattern (backslash escapes) as (its literal start, the same pattern in GLOB's
    syntax): SQLite's LIKE ignores ASCII case and can use no index; GLOB is case-sensitive,
    as PostgreSQL's LIKE is, and the literal start bounds an index range."""
    prefix: list[str] = []
    out: list[str] = []
    literal = True
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            ch = next(chars, "\\")
            out.append(f"[{ch}]" if ch in "*?[" else ch)
        elif ch in "%_":
            literal = False
            out.append("*" if ch == "%" else "?")
            continue
        else:
            out.append(f"[{ch}]" if ch in "*?[" else ch)
        if literal:
            prefix.append(ch)
    return "".join(prefix), "".join(out)


def _after_prefix(prefix: str) -> str | None:
    """The first string above every string that starts with `prefix` (code point order, which
    is UTF-8's byte order: SQLite's and PostgreSQL's `text_pattern_ops`)."""
    if not prefix or ord(prefix[-1]) >= 0x10FFFF:
        return None
    following = ord(prefix[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000  # surrogates have no UTF-8 form
    return prefix[:-1] + chr(following)


def pattern_range(column: Any, prefix: str) -> list[ColumnElement[bool]]:
    """PostgreSQL: the names starting with `prefix` as a range in byte order (`~>=~`, `~<~`),
    the one ix_tags_name's `text_pattern_ops` serves. Bound values, not a LIKE the planner
    would have to take apart: a prepared statement's generic plan keeps the range too."""
    out = [column.op("~>=~", is_comparison=True)(prefix)]
    upper = _after_prefix(prefix)
    if upper is not None:
        out.append(column.op("~<~", is_comparison=True)(upper))
    return out


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
        self._held: Connection | None = None
        self.dialect = dialect_for(read_engine)
        self._fingerprints: dict[tuple[int, str], tuple[object, tuple[int, float]]] = {}
        self._untagged: dict[tuple[int, str], tuple[object, list[UntaggedRow]]] = {}
        self._lengths: dict[tuple[int, str, str], tuple[str, int]] = {}
        self._thread: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, a function of these queries (or of the services over them): inline on
        SQLite; on PostgreSQL in this object's one thread, so the event loop never waits for
        the database and the queries still run one at a time on one connection."""
        if self.dialect.name == "sqlite":
            return fn(*args)
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="portway-browse")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:
        """One read connection kept for these queries (all made on one thread, one at a time,
        see `run`): SQLite's change token then compares across requests. A connection
        that failed is dropped and the next query opens another."""
        if self._held is None:
            self._held = self.engine.connect()
        held = self._held
        try:
            yield held
            held.rollback()  # end the statement's transaction (PostgreSQL: not idle in one)
        except Exception:
            self._held = None
            with contextlib.suppress(Exception):
                held.invalidate()
                held.close()
            raise

    def _token(self, conn: Connection) -> object | None:
        """The change token of this connection (SQLite's data_version counts per connection,
        so the connection is part of it)."""
        value = self.dialect.change_token(conn)
        return None if value is None else (id(conn.connection.dbapi_connection), value)

    def tag_fingerprint(self, repo_id: int, image: str) -> tuple[int, float]:
        """(tags, newest change): moves when a tag of the image is added, moved or removed.
        Kept while the database's change token (SQLite's data_version) stays the same."""
        with self._connect() as conn:
            token = self._token(conn)
            kept = self._fingerprints.get((repo_id, image))
            if token is not None and kept is not None and kept[0] == token:
                return kept[1]
            where = (tags.c.repo_id == repo_id, tags.c.image == image)
            count = conn.execute(select(func.count()).where(*where)).scalar()
            newest = conn.execute(select(func.max(tags.c.updated)).where(*where)).scalar()
        value = (int(count or 0), float(newest or 0.0))
        if len(self._fingerprints) > 1000:
            self._fingerprints.clear()
        self._fingerprints[(repo_id, image)] = (token, value)
        return value

    def tags_pushed(
        self,
        repo_id: int,
        image: str,
        after: tuple[float, str] | None,
        limit: int,
        descending: bool,
    ) -> list[TagRow]:
        """Tags in push-time order (then name), a range of ix_tags_pushed."""
        stmt = select(tags.c.name, tags.c.digest, tags.c.updated).where(
            tags.c.repo_id == repo_id, tags.c.image == image
        )
        if after is not None:
            key = tuple_(tags.c.updated, tags.c.name)
            stmt = stmt.where(key < tuple_(*after) if descending else key > tuple_(*after))
        if descending:
            stmt = stmt.order_by(tags.c.updated.desc(), tags.c.name.desc())
        else:
            stmt = stmt.order_by(tags.c.updated, tags.c.name)
        with self._connect() as conn:
            return [TagRow(image, r[0], r[1], r[2]) for r in conn.execute(stmt.limit(limit))]

    def tags(self, repo_id: int, image: str) -> list[TagRow]:
        stmt = select(tags.c.name, tags.c.digest, tags.c.updated).where(
            tags.c.repo_id == repo_id, tags.c.image == image
        )
        with self._connect() as conn:
            return [TagRow(image, r[0], r[1], r[2]) for r in conn.execute(stmt)]

    def tags_starting(self, repo_id: int, image: str, prefix: str) -> list[TagRow]:
        """The image's tags whose names start with `prefix` (every tag for ""), in no order:
        a range of the primary key on SQLite; on PostgreSQL, whose collation may not order a
        prefix's names together, a byte-order range that ix_tags_name serves (or the image's
        tags, whichever the planner finds cheaper)."""
        stmt = select(tags.c.name, tags.c.digest, tags.c.updated).where(
            tags.c.repo_id == repo_id, tags.c.image == image
        )
        if prefix and self.engine.dialect.name == "sqlite":
            stmt = stmt.where(tags.c.name >= prefix)
            upper = _after_prefix(prefix)
            if upper is not None:
                stmt = stmt.where(tags.c.name < upper)
        elif prefix:
            stmt = stmt.where(*pattern_range(tags.c.name, prefix))
        with self._connect() as conn:
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
        with self._connect() as conn:
            return [TagRow(image, r[0], r[1], r[2]) for r in conn.execute(stmt)]

    def untagged(self, repo_id: int, image: str) -> list[UntaggedRow]:
        """Manifests of the image no tag points at (an index's platforms included); kept
        while the image's tags and manifests stay the same."""
        with self._connect() as conn:
            token = self._token(conn)
            if token is None:
                count = select(func.count()).where(
                    manifests.c.repo_id == repo_id, manifests.c.image == image
                )
                token = (self.tag_fingerprint(repo_id, image), conn.execute(count).scalar())
        kept = self._untagged.get((repo_id, image))
        if kept is not None and kept[0] == token:
            return kept[1]
        rows = self._untagged_rows(repo_id, image)
        if len(self._untagged) > 100:
            self._untagged.clear()
        self._untagged[(repo_id, image)] = (token, rows)
        return rows

    def _untagged_rows(self, repo_id: int, image: str) -> list[UntaggedRow]:
        """Digests from the two tables' indexes first, then the rows of those alone."""
        stored = select(manifests.c.digest).where(
            manifests.c.repo_id == repo_id, manifests.c.image == image
        )
        tagged = select(tags.c.digest).where(tags.c.repo_id == repo_id, tags.c.image == image)
        out: list[UntaggedRow] = []
        with self._connect() as conn:
            loose = sorted(r[0] for r in conn.execute(stored.except_(tagged)))
            for start in range(0, len(loose), 500):
                stmt = select(
                    manifests.c.digest, manifests.c.media_type, manifests.c.created
                ).where(
                    manifests.c.repo_id == repo_id,
                    manifests.c.image == image,
                    manifests.c.digest.in_(loose[start : start + 500]),
                )
                out += [UntaggedRow(r[0], r[1], r[2]) for r in conn.execute(stmt)]
        out.sort(key=lambda r: r.digest)
        return out

    def components(
        self,
        repo_id: int,
        after: tuple[str, str] | None,
        limit: int,
        image: str | None = None,
        name_like: str | None = None,
        tag_like: str | None = None,
    ) -> list[TagRow]:
        """Tags across the repository in (image, tag) order, after `after`. A pattern with a
        literal start reads a range: of the primary key for an image pattern on SQLite, of
        ix_tags_name for a tag pattern (SQLite's binary order; PostgreSQL's `text_pattern_ops`,
        the matches then sorted in code point order, as SQLite's). On PostgreSQL the rest is
        LIKE over the primary key, in the database's collation."""
        stmt = select(tags.c.image, tags.c.name, tags.c.digest, tags.c.updated).where(
            tags.c.repo_id == repo_id
        )
        sqlite = self.engine.dialect.name == "sqlite"
        by_name = False  # the rows come from a range of ix_tags_name, sorted afterwards
        if image is not None:
            stmt = stmt.where(tags.c.image == image)
        for column, pattern in ((tags.c.image, name_like), (tags.c.name, tag_like)):
            if pattern is None:
                continue
            prefix, glob = like_parts(pattern)
            if not sqlite:
                stmt = stmt.where(column.like(pattern, escape="\\"))
                if prefix and column is tags.c.name:
                    stmt = stmt.where(*pattern_range(column, prefix))
                    by_name = True
                continue
            stmt = stmt.where(column.op("GLOB")(glob))
            if prefix:
                stmt = stmt.where(column >= prefix)
                upper = _after_prefix(prefix)
                if upper is not None:
                    stmt = stmt.where(column < upper)
                by_name = by_name or (column is tags.c.name and image is None)
        order: tuple[Any, Any] = (tags.c.image, tags.c.name)
        if by_name and not sqlite:
            # Code point order, as SQLite's; it also keeps the planner off the primary key
            # (another collation), whose walk from the cursor on would pass every tag.
            order = (tags.c.image.collate("C"), tags.c.name.collate("C"))
        if after is not None:
            if by_name and sqlite:
                # `image || ''` keeps SQLite from walking the primary key from the cursor's
                # image on (every tag after it) instead of reading the tag range.
                img = tags.c.image.concat("")
                stmt = stmt.where(
                    or_(img > after[0], and_(img == after[0], tags.c.name > after[1]))
                )
            else:  # a row-value seek on the primary key, or a filter of the name range
                stmt = stmt.where(tuple_(*order) > tuple_(*after))
        stmt = stmt.order_by(*order).limit(limit)
        with self._connect() as conn:
            return [TagRow(r[0], r[1], r[2], r[3]) for r in conn.execute(stmt)]

    def bodies(
        self, repo_id: int, image: str, digests: Sequence[str]
    ) -> dict[str, tuple[str, bytes]]:
        """digest -> (media type, body) for the digests stored in the image."""
        out: dict[str, tuple[str, bytes]] = {}
        wanted = list(dict.fromkeys(digests))
        with self._connect() as conn:
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
        """(image, digest) -> (media type, manifest size), for a page of components: one
        primary-key lookup per image for the digests not seen before (a digest's bytes never
        change, so what was read is kept)."""
        out: dict[tuple[str, str], tuple[str, int]] = {}
        by_image: dict[str, list[str]] = {}
        for image, digest in dict.fromkeys(keys):
            seen = self._lengths.get((repo_id, image, digest))
            if seen is not None:
                out[(image, digest)] = seen
            else:
                by_image.setdefault(image, []).append(digest)
        if not by_image:
            return out
        if len(self._lengths) > LENGTHS_KEPT:
            self._lengths.clear()
        with self._connect() as conn:
            for image, digests in by_image.items():
                stmt = select(
                    manifests.c.digest, manifests.c.media_type, func.length(manifests.c.body)
                ).where(
                    manifests.c.repo_id == repo_id,
                    manifests.c.image == image,
                    manifests.c.digest.in_(digests),
                )
                for digest, media_type, size in conn.execute(stmt):
                    out[(image, digest)] = (media_type, int(size))
                    self._lengths[(repo_id, image, digest)] = (media_type, int(size))
        return out
