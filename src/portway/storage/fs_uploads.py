"""Upload sessions on the filesystem backend: one appending file per session.

The session file is the session's state (its size is the offset), so any worker, or any node
sharing the folder, continues it. A request holds the file's flock while it appends, the
closing PUT holds it from the size check to the rename into the blob tree: no request still
appending can change what was verified. Writes are batched, hashed and written in a worker
thread with early writeback (ADR 5), so the fsync that publishes the blob finds little to do.
The running hash lives in the appending worker, and is recorded on the file for the others
(portway.storage.checkpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.storage import checkpoint
from portway.storage.faults import StorageFull, is_full
from portway.storage.filesystem import FilesystemBackend, FileWriter, ObjectBusy
from portway.storage.uploads import RunningHashes

WRITE_BATCH = 1024 * 1024  # bytes handed to the writer thread at once


def upload_key(upload_id: str) -> str:
    return f"uploads/{upload_id}"


class FileUploads:
    def __init__(self, backend: FilesystemBackend, blob_key: Callable[[Digest], str]) -> None:
        self.backend = backend
        self._blob_key = blob_key
        self.hashes = RunningHashes()

    async def new_upload(self) -> str:
        upload_id = str(uuidlib.uuid4())
        try:
            writer = await self.backend.writer(upload_key(upload_id))
            await writer.close(sync=False)
        except OSError as exc:
            if is_full(exc):
                raise StorageFull("no upload can be started") from exc
            raise
        self.hashes.start(upload_id)
        return upload_id

    async def upload_mtime(self, upload_id: str) -> float | None:
        info = await self.backend.stat(upload_key(upload_id))
        return None if info is None else info.mtime

    async def upload_size(self, upload_id: str) -> int | None:
        info = await self.backend.stat(upload_key(upload_id))
        return None if info is None else info.size

    async def append(
        self,
        upload_id: str,
        chunks: AsyncIterator[bytes],
        *,
        expected_length: int | None = None,
        expected_offset: int | None = None,
    ) -> int:
        """Append a request body to the session; returns the new size.

        `expected_offset` (a chunk's Content-Range start) is checked under the session lock,
        so two racing chunks for the same offset cannot both be accepted. On any failure
        (client gone, short body) the data is cut back to where it was, so the session stays
        usable and nothing half-written counts.
        """
        writer = await self._open_session(upload_id)
        start = writer.size
        if expected_offset is not None and start != expected_offset:
            await writer.close(sync=False)
            raise RegistryError(
                "RANGE_INVALID",
                f"chunk starts at {expected_offset} but the upload is at offset {start}",
            )
        hasher = self.hashes.at(upload_id, start)
        written = 0
        try:
            written = await pump(chunks, writer, hasher)
            if expected_length is not None and written != expected_length:
                raise RegistryError(
                    "SIZE_INVALID",
                    f"request body has {written} bytes, Content-Length said {expected_length}",
                )
        except BaseException as exc:
            with contextlib.suppress(OSError):
                writer.truncate_sync(start)  # still under the lock: nobody saw the tail
            await writer.close(sync=False)
            self.hashes.forget(upload_id)
            if is_full(exc):
                raise StorageFull(f"the upload was cut back to {start} bytes") from exc
            raise
        if hasher is not None:  # for a closing PUT that reaches another worker (ADR 34)
            done = hasher.copy().hexdigest()
            await asyncio.to_thread(checkpoint.record, writer.fileno(), start + written, done)
        await writer.close(sync=False)
        self.hashes.advance(upload_id, start + written, hasher)
        return start + written

    async def commit(self, upload_id: str, digest: Digest, size: int | None = None) -> int:
        """Verify the session's data against `digest` and publish it as that blob."""
        key = upload_key(upload_id)
        holder = await self._open_session(upload_id)
        try:
            total = holder.size
            if size is not None and total != size:
                raise RegistryError("SIZE_INVALID", f"upload has {total} bytes, expected {size}")
            actual = self.hashes.take(upload_id, total, digest)
            sync = asyncio.ensure_future(asyncio.to_thread(os.fsync, holder.fileno()))
            try:
                if actual is None:  # another worker appended, or sha512
                    actual = await asyncio.to_thread(self._stored_digest, holder, key, digest)
            finally:
                await asyncio.shield(sync)
            if actual != digest.hex:
                raise RegistryError(
                    "DIGEST_INVALID",
                    f"uploaded content has digest {digest.algorithm}:{actual}, not {digest}",
                )
            await self.backend.move(key, self._blob_key(digest))
        except OSError as exc:
            if is_full(exc):
                raise StorageFull("the blob could not be published") from exc
            raise
        finally:
            await holder.close(sync=False)
        return total

    async def _open_session(self, upload_id: str) -> FileWriter:
        """The session's file, opened for appending and locked against other requests."""
        try:
            return await self.backend.writer(upload_key(upload_id), append=True)
        except ObjectBusy:
            raise RegistryError(
                "BLOB_UPLOAD_INVALID",
                f"upload {upload_id} is busy: another request is writing or closing it",
            ) from None
        except FileNotFoundError:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", f"upload {upload_id} not found") from None

    def _stored_digest(self, holder: FileWriter, key: str, digest: Digest) -> str:
        """The digest recorded on the session file by the worker that appended all of it,
        else the stored bytes hashed again."""
        if digest.algorithm == "sha256":
            found = checkpoint.recorded(holder.fileno(), holder.size)
            if found is not None:
                return found
        return self._hash_file(key, digest.algorithm)

    def _hash_file(self, key: str, algorithm: str) -> str:
        hasher = hashlib.new(algorithm)
        path = self.backend.local_path(key)
        assert path is not None
        with open(path, "rb") as f:
            while chunk := f.read(4 * WRITE_BATCH):
                hasher.update(chunk)
        return hasher.hexdigest()

    async def abort(self, upload_id: str) -> None:
        self.hashes.forget(upload_id)
        await self.backend.delete(upload_key(upload_id))

    async def ingest(
        self, chunks: AsyncIterator[bytes], digest: Digest, expected_length: int | None = None
    ) -> int:
        """Monolithic upload: stream a body into a new session and commit it at once."""
        upload_id = await self.new_upload()
        try:
            await self.append(upload_id, chunks, expected_length=expected_length)
            return await self.commit(upload_id, digest)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.abort(upload_id)
            raise

    async def purge_pending(self, max_age: float) -> int:
        """Objects a killed worker left half-written under `.incoming/`."""
        gone = 0
        for pending in await self.backend.pending_writes(max_age):
            await self.backend.abort_pending(pending)
            gone += 1
        return gone


def _write_batch(writer: FileWriter, hasher: Any | None, batch: list[bytes]) -> None:
    if hasher is not None:
        for chunk in batch:
            hasher.update(chunk)
    writer.writev_sync(batch)


async def pump(chunks: AsyncIterator[bytes], writer: FileWriter, hasher: Any | None) -> int:
    """Read chunks into batches of ~WRITE_BATCH bytes; hash and write each batch in a thread
    (hashlib and writev release the GIL) while the next one is read from the socket."""
    written = 0
    pending: asyncio.Future[None] | None = None
    batch: list[bytes] = []
    batch_len = 0
    loop = asyncio.get_running_loop()
    try:
        async for chunk in chunks:
            batch.append(chunk)
            batch_len += len(chunk)
            if batch_len >= WRITE_BATCH:
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(None, _write_batch, writer, hasher, batch)
                written += batch_len
                batch, batch_len = [], 0
        if batch:
            if pending is not None:
                await pending
            pending = loop.run_in_executor(None, _write_batch, writer, hasher, batch)
            written += batch_len
    finally:
        if pending is not None:
            await asyncio.shield(pending)
    return written
