"""Blob links (which image holds which blob, and its size) and upload sessions."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, or_, select, update

from portway.db.base import StoreBase
from portway.db.dialect import Dialect
from portway.db.rows import UploadRow
from portway.db.schema import blob_links, manifest_refs, uploads


class BlobStore(StoreBase):
    async def blob_size(self, repo_id: int, image: str, digest: str) -> int | None:
        def load(conn: Connection) -> int | None:  # statement built on a cache miss only
            stmt = select(blob_links.c.size).where(
                blob_links.c.repo_id == repo_id,
                blob_links.c.image == image,
                blob_links.c.digest == digest,
            )
            row = conn.execute(stmt).first()
            return None if row is None else int(row[0])

        return await self._cached(("b", repo_id, image, digest), load)

    async def references(self, repo_id: int, image: str, digest: str) -> bool:
        """Whether a manifest stored in this image references `digest` (config, layer, child)."""
        row = await self._one(
            select(manifest_refs.c.manifest)
            .where(
                manifest_refs.c.repo_id == repo_id,
                manifest_refs.c.image == image,
                manifest_refs.c.ref == digest,
            )
            .limit(1),
            "references",
        )
        return row is not None

    async def _missing(
        self, table: Any, repo_id: int, image: str, digests: Sequence[str], operation: str
    ) -> list[str]:
        """The digests of `digests` that `table` has no row for in this image."""
        if not digests:
            return []
        stmt = select(table.c.digest).where(
            table.c.repo_id == repo_id, table.c.image == image, table.c.digest.in_(set(digests))
        )
        have = await self._read(lambda conn: {r[0] for r in conn.execute(stmt)}, operation)
        return [d for d in digests if d not in have]

    async def missing_blobs(self, repo_id: int, image: str, digests: Sequence[str]) -> list[str]:
        return await self._missing(blob_links, repo_id, image, digests, "missing_blobs")

    async def link_blob(self, repo_id: int, image: str, digest: str, size: int) -> None:
        dialect = self.dialect
        await self._write(lambda conn: link(dialect, conn, repo_id, image, digest, size))

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

    async def get_upload(self, upload_id: str) -> UploadRow | None:
        return _upload_row(await self._one(_UPLOAD, "get_upload", {"upload_id": upload_id}))

    async def claim_upload(self, upload_id: str, holder: str, until: float) -> UploadRow | None:
        """Take the session's lease for `holder` until `until` (Unix time), unless another
        holder's lease still runs; returns the session as the lease found it, None when it is
        missing or busy. The lease is what keeps two requests (on any nodes) from writing one
        session at once."""
        now = time.time()

        def run(conn: Connection) -> UploadRow | None:
            taken = conn.execute(
                update(uploads)
                .where(
                    uploads.c.id == upload_id,
                    or_(
                        uploads.c.lease.is_(None),
                        uploads.c.lease < now,
                        uploads.c.holder == holder,
                    ),
                )
                .values(holder=holder, lease=until)
            )
            if not taken.rowcount:
                return None
            return _upload_row(
                conn.execute(select(uploads).where(uploads.c.id == upload_id)).first()
            )

        return await self._write(run)

    async def save_upload(
        self, upload_id: str, holder: str, size: int, state: str | None, until: float | None
    ) -> bool:
        """Record the session's size and state while `holder` still holds its lease; `until`
        None gives the lease up. False when the lease was lost (expired and taken)."""
        now = time.time()

        def run(conn: Connection) -> bool:
            done = conn.execute(
                update(uploads)
                .where(uploads.c.id == upload_id, uploads.c.holder == holder)
                .values(
                    size=size,
                    state=state,
                    updated=now,
                    lease=until,
                    holder=holder if until is not None else None,
                )
            )
            return bool(done.rowcount)

        return await self._write(run)

    async def finish_upload(
        self, upload_id: str, repo_id: int, image: str, digest: str, size: int
    ) -> None:
        """Link the committed blob and close the session in one transaction."""
        dialect = self.dialect

        def run(conn: Connection) -> None:
            link(dialect, conn, repo_id, image, digest, size)
            conn.execute(delete(uploads).where(uploads.c.id == upload_id))

        await self._write(run)

    async def delete_upload(self, upload_id: str) -> None:
        await self._write(
            lambda conn: conn.execute(delete(uploads).where(uploads.c.id == upload_id))
        )

    async def expired_uploads(self, older_than: float, repo_id: int | None = None) -> list[str]:
        """Sessions opened before `older_than` (their data may have been written since), of
        one repository or (`repo_id` None) of all."""
        stmt = select(uploads.c.id).where(uploads.c.created < older_than)
        if repo_id is not None:
            stmt = stmt.where(uploads.c.repo_id == repo_id)
        return await self._read(lambda conn: [r[0] for r in conn.execute(stmt)])


# Built once: every PATCH and closing PUT reads it (see lifecycle._STATE_OF).
_UPLOAD = select(uploads).where(uploads.c.id == bindparam("upload_id"))


def _upload_row(row: Any) -> UploadRow | None:
    if row is None:
        return None
    return UploadRow(
        row.id, row.repo_id, row.image, row.created, row.updated, int(row.size), row.state
    )


def link(
    dialect: Dialect, conn: Connection, repo_id: int, image: str, digest: str, size: int
) -> None:
    """Link a blob into an image unless it is linked already: one upsert, so two writers
    linking the same blob at once (two nodes, or two workers) both succeed with one row."""
    conn.execute(
        dialect.insert(blob_links)
        .values(repo_id=repo_id, image=image, digest=digest, size=size, created=time.time())
        .on_conflict_do_nothing(index_elements=["repo_id", "image", "digest"])
    )
