"""BlobStore: content-addressed blobs and upload sessions on top of a BlobBackend.

A blob becomes visible only by an atomic move of a fully written, fsynced temporary object
whose digest and size verified. Upload data lives in the backend (not in a process), so a
chunked upload can continue on another worker; each process keeps the running hash of the
sessions it served and falls back to re-reading the data when another worker appended.

A full file system raises `StorageFull` (portway.storage.faults): the session is cut back to
where it was, nothing half-written becomes visible, and the same upload works once space is
back. `check` compares a blob file with its recorded size before it is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
import uuid as uuidlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.storage.faults import StorageFaults, StorageFull, is_full
from portway.storage.filesystem import FilesystemBackend, FileWriter, ObjectBusy

WRITE_BATCH = 1024 * 1024  # bytes handed to the writer thread at once
_HASH_CACHE_LIMIT = 4096


class BlobStore:
    def __init__(self, backend: FilesystemBackend) -> None:
        self.backend = backend
        # upload id -> (offset the hash covers, running sha256); sha512 uploads are rare, so
        # they are hashed from the file at commit instead of doubling every upload's CPU cost
        self._hashes: dict[str, tuple[int, Any]] = {}
        self.faults = StorageFaults()

    # -- blobs -------------------------------------------------------------------------
    @staticmethod
    def blob_key(digest: Digest) -> str:
        return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    async def stat(self, digest: Digest) -> int | None:
        info = await self.backend.stat(self.blob_key(digest))
        return None if info is None else info.size

    def local_path(self, digest: Digest) -> Path | None:
        return self.backend.local_path(self.blob_key(digest))

    async def intact(self, digest: Digest, recorded: int) -> bool:
        """Is the blob's file there with the size its records say? A missing or cut (or
        grown) file is a storage fault: logged once, counted, and not to be served.
        (Its content is not hashed here: that is a full verification's job.)"""
        key = self.blob_key(digest)
        info = await self.backend.stat(key)
        if info is not None and info.size == recorded:
            return True
        actual = None if info is None else info.size
        self.faults.damaged(str(digest), str(self.backend.local_path(key)), recorded, actual)
        return False

    def read(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        return self.backend.read(self.blob_key(digest), offset, length)

    async def delete(self, digest: Digest) -> None:
        await self.backend.delete(self.blob_key(digest))

    # -- uploads -----------------------------------------------------------------------
    @staticmethod
    def upload_key(upload_id: str) -> str:
        return f"uploads/{upload_id}"

    async def new_upload(self) -> str:
        upload_id = str(uuidlib.uuid4())
        try:
            writer = await self.backend.writer(self.upload_key(upload_id))
            await writer.close(sync=False)
        except OSError as exc:
            if is_full(exc):
                raise StorageFull("no upload can be started") from exc
            raise
        self._hashes[upload_id] = (0, hashlib.sha256())
        self._trim_cache()
        return upload_id

    def _trim_cache(self) -> None:
        while len(self._hashes) > _HASH_CACHE_LIMIT:
            self._hashes.pop(next(iter(self._hashes)))

    async def upload_mtime(self, upload_id: str) -> float | None:
        info = await self.backend.stat(self.upload_key(upload_id))
        return None if info is None else info.mtime

    async def upload_size(self, upload_id: str) -> int | None:
        info = await self.backend.stat(self.upload_key(upload_id))
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
        cached = self._hashes.get(upload_id)
        hashers = cached[1:] if cached is not None and cached[0] == start else None
        written = 0
        try:
            written = await _pump(chunks, writer, hashers)
            if expected_length is not None and written != expected_length:
                raise RegistryError(
                    "SIZE_INVALID",
                    f"request body has {written} bytes, Content-Length said {expected_length}",
                )
        except BaseException as exc:
            with contextlib.suppress(OSError):
                writer.truncate_sync(start)  # still under the lock: nobody saw the tail
            await writer.close(sync=False)
            self._hashes.pop(upload_id, None)
            if is_full(exc):
                raise StorageFull(f"the upload was cut back to {start} bytes") from exc
            raise
        await writer.close(sync=False)
        if hashers is not None:
            self._hashes[upload_id] = (start + written, hashers[0])
        else:
            self._hashes.pop(upload_id, None)
        return start + written

    async def commit(self, upload_id: str, digest: Digest, size: int | None = None) -> int:
        """Verify the session's data against `digest` and publish it as that blob.

        The session file stays locked from the size check to the rename, so no request still
        appending to it (on any worker) can change what was verified.
        """
        key = self.upload_key(upload_id)
        holder = await self._open_session(upload_id)
        try:
            total = holder.size
            if size is not None and total != size:
                raise RegistryError("SIZE_INVALID", f"upload has {total} bytes, expected {size}")
            cached = self._hashes.pop(upload_id, None)
            sync = asyncio.ensure_future(asyncio.to_thread(os.fsync, holder.fileno()))
            try:
                if cached is not None and cached[0] == total and digest.algorithm == "sha256":
                    actual = cached[1].hexdigest()
                else:  # another worker appended, or sha512: read the data back
                    actual = await asyncio.to_thread(self._hash_file, key, digest.algorithm)
            finally:
                await asyncio.shield(sync)
            if actual != digest.hex:
                raise RegistryError(
                    "DIGEST_INVALID",
                    f"uploaded content has digest {digest.algorithm}:{actual}, not {digest}",
                )
            await self.backend.move(key, self.blob_key(digest))
        except OSError as exc:
            if is_full(exc):
                raise StorageFull("the blob could not be published") from exc
            raise
        finally:
            await holder.close(sync=False)
        self.faults.healed(str(digest))
        return total

    async def _open_session(self, upload_id: str) -> FileWriter:
        """The session's file, opened for appending and locked against other requests."""
        try:
            return await self.backend.writer(self.upload_key(upload_id), append=True)
        except ObjectBusy:
            raise RegistryError(
                "BLOB_UPLOAD_INVALID",
                f"upload {upload_id} is busy: another request is writing or closing it",
            ) from None
        except FileNotFoundError:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", f"upload {upload_id} not found") from None

    def _hash_file(self, key: str, algorithm: str) -> str:
        hasher = hashlib.new(algorithm)
        path = self.backend.local_path(key)
        assert path is not None
        with open(path, "rb") as f:
            while chunk := f.read(4 * WRITE_BATCH):
                hasher.update(chunk)
        return hasher.hexdigest()

    async def abort(self, upload_id: str) -> None:
        self._hashes.pop(upload_id, None)
        await self.backend.delete(self.upload_key(upload_id))

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

    async def purge_leftovers(self, max_age: float) -> int:
        """Remove spool files and proxy lock files a killed worker left behind, once untouched
        for `max_age` seconds; a file still locked (a fetch in progress) stays. Returns how
        many went."""
        return await asyncio.to_thread(self._purge_leftovers, time.time() - max_age)

    def _purge_leftovers(self, cutoff: float) -> int:
        removed = 0
        for folder in (self.spool_dir(), self.lock_dir()):
            for path in folder.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff and _remove_unless_locked(path):
                        removed += 1
        return removed

    def lock_dir(self) -> Path:
        """A folder for the lock files worker processes coordinate through."""
        path = self.backend.local_path("locks")
        assert path is not None
        path.mkdir(parents=True, exist_ok=True)
        return path

    def spool_dir(self) -> Path:
        """A folder on the blob store's filesystem for files `publish_file` will adopt."""
        path = self.backend.local_path("uploads/spool")
        assert path is not None
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def publish_file(self, path: Path, digest: Digest) -> None:
        """Adopt a fully written local file whose digest the caller verified as it streamed
        (a proxy's cache fill): fsync it, then give it its blob name atomically. A hard link,
        not a rename: readers still opening the file by its old path keep finding it."""
        target = self.backend.local_path(self.blob_key(digest))
        assert target is not None

        def _publish() -> None:
            _fsync_path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except FileExistsError:
                if target.stat().st_size == path.stat().st_size:
                    return  # the same content is there already
                # The file there is damaged (cut short): put the verified one in its place.
                spare = target.with_name(f".{target.name}.{uuidlib.uuid4().hex}")
                os.link(path, spare)
                os.replace(spare, target)
            _fsync_path(target.parent)  # the new name survives a crash

        await asyncio.to_thread(_publish)
        self.faults.healed(str(digest))


def _remove_unless_locked(path: Path) -> bool:
    """Remove a leftover file; a `.lock` file only when nobody holds it (and then as its
    holder would: locked, so no one else takes it meanwhile)."""
    if path.suffix != ".lock":
        path.unlink()
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        path.unlink()
        return True
    finally:
        os.close(fd)


def _fsync_path(path: Path | None) -> None:
    if path is None:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_batch(writer: FileWriter, hashers: tuple[Any, ...] | None, batch: list[bytes]) -> None:
    if hashers is not None:
        for h in hashers:
            for chunk in batch:
                h.update(chunk)
    writer.writev_sync(batch)


async def _pump(
    chunks: AsyncIterator[bytes], writer: FileWriter, hashers: tuple[Any, ...] | None
) -> int:
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
                pending = loop.run_in_executor(None, _write_batch, writer, hashers, batch)
                written += batch_len
                batch, batch_len = [], 0
        if batch:
            if pending is not None:
                await pending
            pending = loop.run_in_executor(None, _write_batch, writer, hashers, batch)
            written += batch_len
    finally:
        if pending is not None:
            await asyncio.shield(pending)
    return written
