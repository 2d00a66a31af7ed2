"""MetadataStore: repositories, images, manifests, tags, blob links and upload sessions in SQL.

Split by aggregate: plumbing and the read cache in portway.db.base, blob links and uploads in
portway.db.blobs, repositories, manifests and tags here; what differs between SQLite and
PostgreSQL is in portway.db.dialect (ADR 0019).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, delete, func, select
from sqlalchemy.sql import ColumnElement, Select

from portway.db.base import CACHE_ENTRIES
from portway.db.blobs import BlobStore
from portway.db.engine import DEFAULT_BUSY_TIMEOUT, engines_for, sqlite_engines
from portway.db.migrations import migrate
from portway.db.rows import ManifestRow, NewManifest, ReferrerRow, TagGuard, UploadRow
from portway.db.schema import manifest_refs, manifests, repositories, tags

__all__ = [
    "CACHE_ENTRIES",
    "ManifestRow",
    "MetadataStore",
    "NewManifest",
    "ReferrerRow",
    "TagGuard",
    "UploadRow",
    "open_metadata",
]


def tag_key(repo_id: int, image: str, tag: str) -> str:
    """What concurrent tag moves serialise on (PostgreSQL advisory locks; SQLite needs none)."""
    return f"tag:{repo_id}:{image}:{tag}"


class MetadataStore(BlobStore):
    @classmethod
    def open_sqlite(cls, path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> MetadataStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        read, write = sqlite_engines(path, busy_timeout)
        migrate(write)
        return cls(read, write, busy_timeout)

    @classmethod
    def open_url(
        cls, url: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT, pool_size: int = 10
    ) -> MetadataStore:
        """`sqlite:///PATH` or `postgresql://user@host:port/db`, migrated to the newest schema.
        `pool_size`: PostgreSQL read threads (and their connections) of this process."""
        read, write = engines_for(url, busy_timeout, pool_size)
        migrate(write)
        return cls(read, write, busy_timeout, read_threads=pool_size)

    # -- repositories ------------------------------------------------------------------
    def ensure_repository(self, name: str, kind: str) -> int:
        """The repository's id, creating it (or updating its kind): one upsert."""
        stmt = self.dialect.insert(repositories).values(name=name, kind=kind, created=time.time())
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"], set_={"kind": stmt.excluded.kind}
        ).returning(repositories.c.id)
        with self._write_engine.begin() as conn:
            repo_id = int(conn.execute(stmt).scalar_one())
        self._signal.written()
        return repo_id

    # -- manifests and tags ------------------------------------------------------------
    async def manifest(
        self, repo_id: int, image: str, reference: str, fresh: bool = False
    ) -> ManifestRow | None:
        """By digest when `reference` is one (validated by the caller), else by tag; `fresh`:
        past the read cache."""
        if ":" in reference:
            return await self.manifest_by_digest(repo_id, image, reference, fresh)
        return await self.manifest_by_tag(repo_id, image, reference, fresh)

    async def manifest_by_tag(
        self, repo_id: int, image: str, tag: str, fresh: bool = False
    ) -> ManifestRow | None:
        # Statements are built inside `load`, on a cache miss only: building one costs more
        # than the whole cached answer (ADR 3).
        def load(conn: Connection) -> ManifestRow | None:
            stmt = (
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
            return _manifest_row(conn, stmt)

        return await self._cached(("t", repo_id, image, tag), load, fresh)

    async def manifest_by_digest(
        self, repo_id: int, image: str, digest: str, fresh: bool = False
    ) -> ManifestRow | None:
        def load(conn: Connection) -> ManifestRow | None:
            stmt = select(manifests.c.digest, manifests.c.media_type, manifests.c.body).where(
                manifests.c.repo_id == repo_id,
                manifests.c.image == image,
                manifests.c.digest == digest,
            )
            return _manifest_row(conn, stmt)

        return await self._cached(("m", repo_id, image, digest), load, fresh)

    async def manifest_bodies(self, repo_id: int, image: str) -> list[bytes]:
        stmt = select(manifests.c.body).where(
            manifests.c.repo_id == repo_id, manifests.c.image == image
        )
        return await self._read(lambda conn: [bytes(r[0]) for r in conn.execute(stmt)])

    async def missing_manifests(
        self, repo_id: int, image: str, digests: Sequence[str]
    ) -> list[str]:
        return await self._missing(manifests, repo_id, image, digests, "missing_manifests")

    async def put_manifest(
        self, repo_id: int, image: str, new: NewManifest, tag_names: Sequence[str], guard: TagGuard
    ) -> None:
        dialect = self.dialect

        def run(conn: Connection) -> None:
            dialect.lock_keys(conn, [tag_key(repo_id, image, t) for t in tag_names])
            for tag in tag_names:
                current = conn.execute(
                    select(tags.c.digest).where(
                        tags.c.repo_id == repo_id, tags.c.image == image, tags.c.name == tag
                    )
                ).first()
                guard(tag, None if current is None else current[0])
            added = conn.execute(
                dialect.insert(manifests)
                .values(
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
                .on_conflict_do_nothing(index_elements=["repo_id", "image", "digest"])
            )
            refs = {d: m for d, m in new.refs}
            if added.rowcount and refs:
                conn.execute(
                    dialect.insert(manifest_refs).on_conflict_do_nothing(
                        index_elements=["repo_id", "image", "manifest", "ref"]
                    ),
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
            if tag_names:
                now = time.time()
                stmt = dialect.insert(tags)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["repo_id", "image", "name"],
                        set_={"digest": stmt.excluded.digest, "updated": stmt.excluded.updated},
                    ),
                    [
                        {
                            "repo_id": repo_id,
                            "image": image,
                            "name": tag,
                            "digest": new.digest,
                            "updated": now,
                        }
                        for tag in dict.fromkeys(tag_names)
                    ],
                )

        await self._write(run)

    async def delete_manifest(self, repo_id: int, image: str, digest: str) -> bool:
        def run(conn: Connection) -> bool:
            gone = conn.execute(
                delete(manifests).where(
                    manifests.c.repo_id == repo_id,
                    manifests.c.image == image,
                    manifests.c.digest == digest,
                )
            )
            if not gone.rowcount:
                return False
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
        dialect = self.dialect

        def run(conn: Connection) -> bool:
            dialect.lock_keys(conn, [tag_key(repo_id, image, tag)])
            where = (tags.c.repo_id == repo_id, tags.c.image == image, tags.c.name == tag)
            row = conn.execute(select(tags.c.digest).where(*where)).first()
            if row is None:
                return False
            guard(tag, row[0])
            conn.execute(delete(tags).where(*where))
            return True

        return await self._write(run)

    async def tag_info(
        self, repo_id: int, image: str, tag: str, fresh: bool = False
    ) -> tuple[str, float] | None:
        """(digest, time the tag was last set or confirmed) — a proxy's freshness clock,
        read on every pull of a cached tag, so cached like the manifest itself."""
        def load(conn: Connection) -> tuple[str, float] | None:
            stmt = select(tags.c.digest, tags.c.updated).where(
                tags.c.repo_id == repo_id, tags.c.image == image, tags.c.name == tag
            )
            row = conn.execute(stmt).first()
            return None if row is None else (str(row[0]), float(row[1]))

        return await self._cached(("ti", repo_id, image, tag), load, fresh)

    async def touch_tag(self, repo_id: int, image: str, tag: str) -> None:
        now = time.time()
        await self._write(
            lambda conn: conn.execute(
                tags.update()
                .where(tags.c.repo_id == repo_id, tags.c.image == image, tags.c.name == tag)
                .values(updated=now)
            )
        )

    async def list_tags(
        self, repo_id: int, image: str, last: str | None, n: int | None
    ) -> list[str]:
        stmt = select(tags.c.name).where(tags.c.repo_id == repo_id, tags.c.image == image)
        return await self._page(stmt, tags.c.name, last, n, "list_tags")

    async def image_exists(self, repo_id: int, image: str) -> bool:
        def load(conn: Connection) -> bool:
            stmt = (
                select(manifests.c.digest)
                .where(manifests.c.repo_id == repo_id, manifests.c.image == image)
                .limit(1)
            )
            return conn.execute(stmt).first() is not None

        return await self._cached(("i", repo_id, image), load)

    async def list_images(self, repo_id: int, last: str | None, n: int | None) -> list[str]:
        stmt = select(manifests.c.image).where(manifests.c.repo_id == repo_id).distinct()
        return await self._page(stmt, manifests.c.image, last, n, "list_images")

    async def _page(
        self,
        stmt: Select[Any],
        column: ColumnElement[str],
        last: str | None,
        n: int | None,
        operation: str,
    ) -> list[str]:
        """Names after `last` in order, at most `n` (the spec's `last`/`n` pagination)."""
        if last is not None:
            stmt = stmt.where(column > last)
        stmt = stmt.order_by(column)
        if n is not None:
            stmt = stmt.limit(n)
        final = stmt
        return await self._read(lambda conn: [r[0] for r in conn.execute(final)], operation)

    async def image_descriptions(self, repo_id: int) -> dict[str, str]:
        """image -> `org.opencontainers.image.description` from its newest annotated manifest."""
        stmt = (
            select(manifests.c.image, manifests.c.annotations)
            .where(manifests.c.repo_id == repo_id, manifests.c.annotations.is_not(None))
            .order_by(manifests.c.created)
        )
        rows = await self._read(lambda conn: list(conn.execute(stmt)))
        out: dict[str, str] = {}
        for image, raw in rows:
            text = json.loads(raw).get("org.opencontainers.image.description")
            if isinstance(text, str) and text:
                out[image] = text
        return out

    async def referrers(self, repo_id: int, image: str, subject: str) -> list[ReferrerRow]:
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
        rows = await self._read(lambda conn: list(conn.execute(stmt)))
        return [
            ReferrerRow(r[0], r[1], int(r[2]), r[3], json.loads(r[4]) if r[4] else None)
            for r in rows
        ]


def _manifest_row(conn: Connection, stmt: Select[Any]) -> ManifestRow | None:
    row = conn.execute(stmt).first()
    return None if row is None else ManifestRow(row[0], row[1], row[2])


def open_metadata(
    settings_or_url: Any, *, busy_timeout: float | None = None
) -> MetadataStore:
    """The metadata store the settings name, migrated to the newest schema.

    `settings_or_url`: a `portway.config.Settings` (its `[database] url` when set, else
    `<data_dir>/portway.db`, and `[server] database_busy_timeout`), or a URL
    (`sqlite:///PATH`, `postgresql://user@host:port/db`), or a `Path` to an SQLite file.
    """
    pool_size = 10
    if isinstance(settings_or_url, Path):
        timeout = DEFAULT_BUSY_TIMEOUT if busy_timeout is None else busy_timeout
        return MetadataStore.open_sqlite(settings_or_url, timeout)
    if isinstance(settings_or_url, str):
        url = settings_or_url
        timeout = DEFAULT_BUSY_TIMEOUT if busy_timeout is None else busy_timeout
    else:
        server = settings_or_url.server
        database = getattr(settings_or_url, "database", None)
        url = getattr(database, "url", None) or ""
        if not url:
            url = f"sqlite:///{server.data_dir / 'portway.db'}"
        timeout = server.database_busy_timeout if busy_timeout is None else busy_timeout
        pool_size = int(getattr(database, "pool_size", pool_size))
    if url.startswith("sqlite:///"):
        return MetadataStore.open_sqlite(Path(url.removeprefix("sqlite:///")), timeout)
    return MetadataStore.open_url(url, timeout, pool_size)
