"""MetadataStore: repositories, images, manifests, tags, blob links and upload sessions in SQL.

Reads run inline on the event loop (indexed lookups of microseconds, one connection per
process, WAL snapshots that never wait for a writer); writes run in the store's writer thread,
each in one `BEGIN IMMEDIATE` transaction, so a manifest and its tags change together or not at
all, and a write lock held elsewhere delays only writes (see portway.db.engine).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select
from sqlalchemy.sql import ColumnElement, Select

from portway.db.engine import DEFAULT_BUSY_TIMEOUT, Writer, sqlite_engines
from portway.db.migrations import migrate
from portway.db.schema import blob_links, manifest_refs, manifests, repositories, tags, uploads

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """A stored manifest: what a manifest GET answers with (repositories call it Manifest)."""

    digest: str
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ReferrerRow:
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class UploadRow:
    id: str
    repo_id: int
    image: str
    created: float
    updated: float


@dataclass(frozen=True, slots=True)
class NewManifest:
    digest: str
    media_type: str
    body: bytes
    artifact_type: str | None
    subject: str | None
    annotations: dict[str, str] | None
    refs: Sequence[tuple[str, bool]]  # (digest, is_manifest)


CACHE_ENTRIES = 20000

TagGuard = Callable[[str, str | None], None]
"""(tag, digest it points at now) -> raise to refuse. Called inside the write transaction that
moves the tag, so "now" is what the move replaces: decide tag moves here, never on a read made
before the transaction (two concurrent pushes would both see the tag as new)."""


class MetadataStore:
    def __init__(
        self,
        read_engine: Engine,
        write_engine: Engine,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        self._read_engine = read_engine
        self._write_engine = write_engine
        self._writer = Writer(write_engine, busy_timeout)
        self._reader: Connection | None = None
        # Hot lookups (manifest by tag or digest, blob link size) cached in process. The cache
        # is dropped whenever the database changed since the last look — SQLite's
        # `data_version` moves on any commit by another connection: this process's writer
        # or another worker — so a cached answer is never staler than the database.
        self._cache: dict[tuple[object, ...], Any] = {}
        self._data_version: object = None

    @classmethod
    def open_sqlite(cls, path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> MetadataStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        read, write = sqlite_engines(path, busy_timeout)
        migrate(write)
        return cls(read, write, busy_timeout)

    @property
    def engine(self) -> Engine:
        """The write engine: every transaction on it takes the write lock (BEGIN IMMEDIATE)."""
        return self._write_engine

    @property
    def read_engine(self) -> Engine:
        """The read engine: statements that never take or wait for the write lock."""
        return self._read_engine

    def close(self) -> None:
        self._writer.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._read_engine.dispose()
        self._write_engine.dispose()

    # -- plumbing ----------------------------------------------------------------------
    def _conn(self) -> Connection:
        if self._reader is None:
            self._reader = self._read_engine.connect()
        return self._reader

    def _one(self, stmt: Any) -> Any:
        return self._conn().execute(stmt).first()

    def _cached(self, key: tuple[object, ...], load: Callable[[], T]) -> T:
        conn = self._conn()
        dbapi = conn.connection.dbapi_connection
        version = dbapi.execute("PRAGMA data_version").fetchone()[0] if dbapi else None
        if version is None or version != self._data_version:
            self._cache.clear()
            self._data_version = version
        try:
            return self._cache[key]  # type: ignore[no-any-return]
        except KeyError:
            pass
        value = load()
        if version is not None:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = value
        return value

    async def _write(self, fn: Callable[[Connection], T]) -> T:
        return await self._writer.run(fn)

    # -- repositories ------------------------------------------------------------------
    def ensure_repository(self, name: str, kind: str) -> int:
        with self._write_engine.begin() as conn:
            row = conn.execute(select(repositories.c.id).where(repositories.c.name == name)).first()
            if row is not None:
                conn.execute(
                    repositories.update().where(repositories.c.id == row[0]).values(kind=kind)
                )
                return int(row[0])
            result = conn.execute(
                insert(repositories).values(name=name, kind=kind, created=time.time())
            )
            pk = result.inserted_primary_key
            assert pk is not None
            return int(pk[0])

    # -- manifests and tags ------------------------------------------------------------
    def manifest(self, repo_id: int, image: str, reference: str) -> ManifestRow | None:
        """By digest when `reference` is one (validated by the caller), else by tag."""
        if ":" in reference:
            return self.manifest_by_digest(repo_id, image, reference)
        return self.manifest_by_tag(repo_id, image, reference)

    def manifest_by_tag(self, repo_id: int, image: str, tag: str) -> ManifestRow | None:
        return self._cached(("t", repo_id, image, tag), lambda: self._by_tag(repo_id, image, tag))

    def _by_tag(self, repo_id: int, image: str, tag: str) -> ManifestRow | None:
        row = self._one(
            select(manifests.c.digest, manifests.c.media_type, manifests.c.body)
            .select_from(
                tags.join(
                    manifests,
                    and_(
                        manifests.c.repo_id == tags.c.repo_id,
                        manifests.c.image == tags.c.image,
                        manifests.c.digest == tags.c.digest,
                    ),
                )
            )
            .where(tags.c.repo_id == repo_id, tags.c.image == image, tags.c.name == tag)
        )
        return None if row is None else ManifestRow(row[0], row[1], row[2])

    def manifest_by_digest(self, repo_id: int, image: str, digest: str) -> ManifestRow | None:
        return self._cached(
            ("m", repo_id, image, digest), lambda: self._by_digest(repo_id, image, digest)
        )

    def _by_digest(self, repo_id: int, image: str, digest: str) -> ManifestRow | None:
        row = self._one(
            select(manifests.c.digest, manifests.c.media_type, manifests.c.body).where(
                manifests.c.repo_id == repo_id,
                manifests.c.image == image,
                manifests.c.digest == digest,
            )
        )
        return None if row is None else ManifestRow(row[0], row[1], row[2])

    def manifest_bodies(self, repo_id: int, image: str) -> list[bytes]:
        stmt = select(manifests.c.body).where(
            manifests.c.repo_id == repo_id, manifests.c.image == image
        )
        return [bytes(r[0]) for r in self._conn().execute(stmt)]

    def _missing(self, table: Any, repo_id: int, image: str, digests: Sequence[str]) -> list[str]:
        """The digests of `digests` that `table` has no row for in this image."""
        if not digests:
            return []
        stmt = select(table.c.digest).where(
            table.c.repo_id == repo_id, table.c.image == image, table.c.digest.in_(set(digests))
        )
        have = {r[0] for r in self._conn().execute(stmt)}
        return [d for d in digests if d not in have]

    def missing_manifests(self, repo_id: int, image: str, digests: Sequence[str]) -> list[str]:
        return self._missing(manifests, repo_id, image, digests)

    async def put_manifest(
        self, repo_id: int, image: str, new: NewManifest, tag_names: Sequence[str], guard: TagGuard
    ) -> None:
        def run(conn: Connection) -> None:
            for tag in tag_names:
                current = conn.execute(
                    select(tags.c.digest).where(
                        tags.c.repo_id == repo_id, tags.c.image == image, tags.c.name == tag
                    )
                ).first()
                guard(tag, None if current is None else current[0])
            exists = conn.execute(
                select(manifests.c.digest).where(
                    manifests.c.repo_id == repo_id,
                    manifests.c.image == image,
                    manifests.c.digest == new.digest,
                )
            ).first()
            if exists is None:
                conn.execute(
                    insert(manifests).values(
                        repo_id=repo_id,
                        image=image,
                        digest=new.digest,
                        media_type=new.media_type,
                        body=new.body,
                        artifact_type=new.artifact_type,
                        subject=new.subject,
                        annotations=json.dumps(new.annotations) if new.annotations else None,
                        created=time.time(),
                    )
                )
                refs = {d: m for d, m in new.refs}
                if refs:
                    conn.execute(
                        insert(manifest_refs),
                        [
                            {
                                "repo_id": repo_id,
                                "image": image,
                                "manifest": new.digest,
                                "ref": d,
                                "is_manifest": int(m),
                            }
                            for d, m in refs.items()
                        ],
                    )
            now = time.time()
            for tag in tag_names:
                conn.execute(
                    delete(tags).where(
                        tags.c.repo_id == repo_id, tags.c.image == image, tags.c.name == tag
                    )
                )
                conn.execute(
                    insert(tags).values(
                        repo_id=repo_id, image=image, name=tag, digest=new.digest, updated=now
                    )
                )

        await self._write(run)

    async def delete_manifest(self, repo_id: int, image: str, digest: str) -> bool:
        def run(conn: Connection) -> bool:
            where = (
                manifests.c.repo_id == repo_id,
                manifests.c.image == image,
                manifests.c.digest == digest,
            )
            if conn.execute(select(manifests.c.digest).where(*where)).first() is None:
                return False
            conn.execute(delete(manifests).where(*where))
            conn.execute(
                delete(manifest_refs).where(
                    manifest_refs.c.repo_id == repo_id,
                    manifest_refs.c.image == image,
                    manifest_refs.c.manifest == digest,
                )
            )
            conn.execute(
                delete(tags).where(
                    tags.c.repo_id == repo_id, tags.c.image == image, tags.c.digest == digest
                )
            )
            return True

        return await self._write(run)

    async def delete_tag(self, repo_id: int, image: str, tag: str, guard: TagGuard) -> bool:
        def run(conn: Connection) -> bool:
            where = (tags.c.repo_id == repo_id, tags.c.image == image, tags.c.name == tag)
            row = conn.execute(select(tags.c.digest).where(*where)).first()
            if row is None:
                return False
            guard(tag, row[0])
            conn.execute(delete(tags).where(*where))
            return True

        return await self._write(run)

    def tag_info(self, repo_id: int, image: str, tag: str) -> tuple[str, float] | None:
        """(digest, time the tag was last set or confirmed) — a proxy's freshness clock,
        read on every pull of a cached tag, so cached like the manifest itself."""
        return self._cached(
            ("ti", repo_id, image, tag), lambda: self._tag_info(repo_id, image, tag)
        )

    def _tag_info(self, repo_id: int, image: str, tag: str) -> tuple[str, float] | None:
        row = self._one(
            select(tags.c.digest, tags.c.updated).where(
                tags.c.repo_id == repo_id, tags.c.image == image, tags.c.name == tag
            )
        )
        return None if row is None else (str(row[0]), float(row[1]))

    async def touch_tag(self, repo_id: int, image: str, tag: str) -> None:
        now = time.time()
        await self._write(
            lambda conn: conn.execute(
                tags.update()
                .where(tags.c.repo_id == repo_id, tags.c.image == image, tags.c.name == tag)
                .values(updated=now)
            )
        )

    def list_tags(self, repo_id: int, image: str, last: str | None, n: int | None) -> list[str]:
        stmt = select(tags.c.name).where(tags.c.repo_id == repo_id, tags.c.image == image)
        return self._page(stmt, tags.c.name, last, n)

    def image_exists(self, repo_id: int, image: str) -> bool:
        return self._cached(("i", repo_id, image), lambda: self._image_exists(repo_id, image))

    def _image_exists(self, repo_id: int, image: str) -> bool:
        stmt = (
            select(manifests.c.digest)
            .where(manifests.c.repo_id == repo_id, manifests.c.image == image)
            .limit(1)
        )
        return self._one(stmt) is not None

    def list_images(self, repo_id: int, last: str | None, n: int | None) -> list[str]:
        stmt = select(manifests.c.image).where(manifests.c.repo_id == repo_id).distinct()
        return self._page(stmt, manifests.c.image, last, n)

    def _page(
        self, stmt: Select[Any], column: ColumnElement[str], last: str | None, n: int | None
    ) -> list[str]:
        """Names after `last` in order, at most `n` (the spec's `last`/`n` pagination)."""
        if last is not None:
            stmt = stmt.where(column > last)
        stmt = stmt.order_by(column)
        if n is not None:
            stmt = stmt.limit(n)
        return [r[0] for r in self._conn().execute(stmt)]

    def image_descriptions(self, repo_id: int) -> dict[str, str]:
        """image -> `org.opencontainers.image.description` from its newest annotated manifest."""
        stmt = (
            select(manifests.c.image, manifests.c.annotations)
            .where(manifests.c.repo_id == repo_id, manifests.c.annotations.is_not(None))
            .order_by(manifests.c.created)
        )
        out: dict[str, str] = {}
        for image, raw in self._conn().execute(stmt):
            text = json.loads(raw).get("org.opencontainers.image.description")
            if isinstance(text, str) and text:
                out[image] = text
        return out

    def referrers(self, repo_id: int, image: str, subject: str) -> list[ReferrerRow]:
        stmt = (
            select(
                manifests.c.digest,
                manifests.c.media_type,
                func.length(manifests.c.body),
                manifests.c.artifact_type,
                manifests.c.annotations,
            )
            .where(
                manifests.c.repo_id == repo_id,
                manifests.c.image == image,
                manifests.c.subject == subject,
            )
            .order_by(manifests.c.digest)
        )
        return [
            ReferrerRow(r[0], r[1], int(r[2]), r[3], json.loads(r[4]) if r[4] else None)
            for r in self._conn().execute(stmt)
        ]

    # -- blob links --------------------------------------------------------------------
    def blob_size(self, repo_id: int, image: str, digest: str) -> int | None:
        return self._cached(
            ("b", repo_id, image, digest), lambda: self._blob_size(repo_id, image, digest)
        )

    def _blob_size(self, repo_id: int, image: str, digest: str) -> int | None:
        row = self._one(
            select(blob_links.c.size).where(
                blob_links.c.repo_id == repo_id,
                blob_links.c.image == image,
                blob_links.c.digest == digest,
            )
        )
        return None if row is None else int(row[0])

    def references(self, repo_id: int, image: str, digest: str) -> bool:
        """Whether a manifest stored in this image references `digest` (config, layer, child)."""
        row = self._one(
            select(manifest_refs.c.manifest)
            .where(
                manifest_refs.c.repo_id == repo_id,
                manifest_refs.c.image == image,
                manifest_refs.c.ref == digest,
            )
            .limit(1)
        )
        return row is not None

    def missing_blobs(self, repo_id: int, image: str, digests: Sequence[str]) -> list[str]:
        return self._missing(blob_links, repo_id, image, digests)

    async def link_blob(self, repo_id: int, image: str, digest: str, size: int) -> None:
        await self._write(lambda conn: _link(conn, repo_id, image, digest, size))

    async def unlink_blob(self, repo_id: int, image: str, digest: str) -> bool:
        def run(conn: Connection) -> bool:
            result = conn.execute(
                delete(blob_links).where(
                    blob_links.c.repo_id == repo_id,
                    blob_links.c.image == image,
                    blob_links.c.digest == digest,
                )
            )
            return bool(result.rowcount)

        return await self._write(run)

    # -- upload sessions ---------------------------------------------------------------
    async def create_upload(self, upload_id: str, repo_id: int, image: str) -> None:
        now = time.time()
        await self._write(
            lambda conn: conn.execute(
                insert(uploads).values(
                    id=upload_id, repo_id=repo_id, image=image, created=now, updated=now
                )
            )
        )

    def get_upload(self, upload_id: str) -> UploadRow | None:
        row = self._one(select(uploads).where(uploads.c.id == upload_id))
        return (
            None
            if row is None
            else UploadRow(row.id, row.repo_id, row.image, row.created, row.updated)
        )

    async def finish_upload(
        self, upload_id: str, repo_id: int, image: str, digest: str, size: int
    ) -> None:
        """Link the committed blob and close the session in one transaction."""

        def run(conn: Connection) -> None:
            _link(conn, repo_id, image, digest, size)
            conn.execute(delete(uploads).where(uploads.c.id == upload_id))

        await self._write(run)

    async def delete_upload(self, upload_id: str) -> None:
        await self._write(
            lambda conn: conn.execute(delete(uploads).where(uploads.c.id == upload_id))
        )

    def expired_uploads(self, older_than: float) -> list[str]:
        """Sessions opened before `older_than` (their data may have been written since)."""
        stmt = select(uploads.c.id).where(uploads.c.created < older_than)
        return [r[0] for r in self._conn().execute(stmt)]


def _link(conn: Connection, repo_id: int, image: str, digest: str, size: int) -> None:
    """Link a blob into an image unless it is linked already (writes are serialized by the
    write transaction, so the check and the insert cannot race)."""
    exists = conn.execute(
        select(blob_links.c.size).where(
            blob_links.c.repo_id == repo_id,
            blob_links.c.image == image,
            blob_links.c.digest == digest,
        )
    ).first()
    if exists is None:
        conn.execute(
            insert(blob_links).values(
                repo_id=repo_id, image=image, digest=digest, size=size, created=time.time()
            )
        )
