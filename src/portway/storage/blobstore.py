"""BlobStore: content-addressed blobs on a BlobBackend, and the upload sessions that make them.

Everything above it speaks digests, `BlobBody` and upload ids; only the backend knows paths
or keys. Blobs are read, stat'ed, signed and deleted through the `BlobBackend` protocol;
upload sessions go to the backend's kind of `UploadSessions` (uploads.py): the filesystem's
appending files, or resumable multipart writes with their state in the metadata store.

A blob becomes visible only once its bytes are fully written and their digest and size
verified. A full file system raises `StorageFull` (portway.storage.faults): nothing
half-written becomes visible. `intact` compares a blob with its recorded size before it is
served.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

from portway.oci.digest import Digest
from portway.storage.backend import BlobBackend, ObjectWriter
from portway.storage.body import BlobBody, LocalFile
from portway.storage.faults import StorageFaults
from portway.storage.filesystem import FilesystemBackend
from portway.storage.fs_uploads import FileUploads
from portway.storage.fsspool import LocalSpool, link_verified
from portway.storage.uploads import UploadSessions

READ_CHUNK = 1024 * 1024


def blob_key(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


class BlobStore:
    def __init__(
        self,
        backend: BlobBackend,
        *,
        sessions: UploadSessions | None = None,
        spool: LocalSpool | None = None,
    ) -> None:
        self.backend = backend
        if isinstance(backend, FilesystemBackend):
            sessions = sessions or FileUploads(backend, blob_key)
            spool = spool or LocalSpool(backend.root / "uploads" / "spool", backend.root / "locks")
        if sessions is None or spool is None:
            raise ValueError("a BlobStore off the filesystem needs its upload sessions and spool")
        self.sessions = sessions
        self.spool = spool
        self.faults = StorageFaults()

    async def connect(self) -> None:
        """Set the backend's client up ahead of the first request (S3), if it has one."""
        connect = getattr(self.backend, "connect", None)
        if connect is not None:
            await connect()

    async def aclose(self) -> None:
        """Close the backend's connections (S3), if it has any."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            await close()

    # -- blobs -------------------------------------------------------------------------
    blob_key = staticmethod(blob_key)

    async def stat(self, digest: Digest) -> int | None:
        info = await self.backend.stat(blob_key(digest))
        return None if info is None else info.size

    async def intact(self, digest: Digest, recorded: int) -> bool:
        """Is the blob there with the size its records say? A missing or cut (or grown) blob
        is a storage fault: logged once, counted, and not to be served. (Its content is not
        hashed here: that is a full verification's job.)"""
        key = blob_key(digest)
        info = await self.backend.stat(key)
        if info is not None and info.size == recorded:
            return True
        actual = None if info is None else info.size
        where = self.backend.local_path(key) or key
        self.faults.damaged(str(digest), str(where), recorded, actual)
        return False

    def body(self, digest: Digest, size: int) -> BlobBody:
        """What a GET sends for a blob known to be there: the local file where the backend
        has one (sendfile), else a stream, with a signer where the backend signs URLs."""
        key = blob_key(digest)
        path = self.backend.local_path(key)
        if path is not None:
            return BlobBody(digest=digest, size=size, local=LocalFile(path))
        opener = getattr(self.backend, "open_raw", None)  # S3: the GET's socket to splice
        return BlobBody(
            digest=digest,
            size=size,
            stream=self.backend.read(key),
            presign=partial(self.backend.presign_get, key),
            raw=partial(opener, key) if opener is not None else None,
        )

    def read(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        return self.backend.read(blob_key(digest), offset, length)

    async def delete(self, digest: Digest) -> None:
        await self.backend.delete(blob_key(digest))

    # -- upload sessions ---------------------------------------------------------------
    async def new_upload(self) -> str:
        return await self.sessions.new_upload()

    async def upload_size(self, upload_id: str) -> int | None:
        return await self.sessions.upload_size(upload_id)

    async def upload_mtime(self, upload_id: str) -> float | None:
        return await self.sessions.upload_mtime(upload_id)

    async def append(
        self,
        upload_id: str,
        chunks: AsyncIterator[bytes],
        *,
        expected_length: int | None = None,
        expected_offset: int | None = None,
    ) -> int:
        """Append a request body to the session; returns the new size. A failed append
        (client gone, short body, wrong offset) leaves the session as it was."""
        return await self.sessions.append(
            upload_id, chunks, expected_length=expected_length, expected_offset=expected_offset
        )

    async def commit(self, upload_id: str, digest: Digest, size: int | None = None) -> int:
        """Verify the session's data against `digest` and publish it as that blob."""
        total = await self.sessions.commit(upload_id, digest, size)
        self.faults.healed(str(digest))
        return total

    async def abort(self, upload_id: str) -> None:
        await self.sessions.abort(upload_id)

    async def ingest(
        self, chunks: AsyncIterator[bytes], digest: Digest, expected_length: int | None = None
    ) -> int:
        """Monolithic upload: stream a body, verify it, publish it."""
        total = await self.sessions.ingest(chunks, digest, expected_length)
        self.faults.healed(str(digest))
        return total

    # -- a proxy's cache fill (fsspool.py) ---------------------------------------------
    def lock_dir(self) -> Path:
        return self.spool.lock_dir()

    def spool_dir(self) -> Path:
        return self.spool.spool_dir()

    async def purge_leftovers(self, max_age: float) -> int:
        """Spool and lock files a killed worker left, and writes it never finished (an S3
        multipart upload, an object half-written under the storage folder)."""
        return await self.spool.purge_leftovers(max_age) + await self.sessions.purge_pending(
            max_age
        )

    async def fill_writer(self, digest: Digest) -> ObjectWriter | None:
        """Where the backend keeps no local files (S3): a writer straight to the blob's
        address, for a proxy's cache fill to tee the upstream body into while it spools it
        for the clients. Nothing is visible at the address before its `commit`, which the
        caller makes only once the digest verified (else `abort`). None on the filesystem,
        where `publish_file` hard-links the spool file instead."""
        key = blob_key(digest)
        if self.backend.local_path(key) is not None:
            return None
        return await self.backend.create(key)

    async def published(self, writer: ObjectWriter, digest: Digest) -> None:
        """Commit a `fill_writer` whose bytes the caller verified against `digest`."""
        await writer.commit()
        self.faults.healed(str(digest))

    async def publish_file(self, path: Path, digest: Digest) -> None:
        """Adopt a fully written local file whose digest the caller verified as it streamed
        (a proxy's cache fill) as that blob: a hard link on the filesystem, an upload to S3."""
        key = blob_key(digest)
        target = self.backend.local_path(key)
        if target is not None:
            await asyncio.to_thread(link_verified, path, target)
        else:
            await self._upload_file(path, key)
        self.faults.healed(str(digest))

    async def _upload_file(self, path: Path, key: str) -> None:
        writer = await self.backend.create(key)
        try:
            with open(path, "rb") as f:
                while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
                    await writer.write(chunk)
        except BaseException:
            with contextlib.suppress(Exception):
                await writer.abort()
            raise
        await writer.commit()
