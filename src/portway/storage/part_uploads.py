"""Upload sessions kept in parts (S3): no node affinity (ADR 20).

A session's state lives where every node sees it: the metadata store's uploads row holds
the bytes stored so far and, as JSON, the multipart upload's token and parts and the key of
the tail object; the bucket holds the parts and the tail. The tail is what a request left
below the backend's part minimum (5 MiB on S3): it is stored as an object of its own and
becomes the head of the next part. A request takes the session's lease (a row lease, so two
requests on any nodes never write one session at once), streams its body into parts of
`part_size` (one sent while the next fills: bounded memory, whatever the body's
size), then records the new state and gives the lease up.

The closing PUT completes the multipart upload to the session's own key, verifies the digest
(with the running sha256 when this node saw every byte, else by reading the object back),
and only then copies it (server-side) to the blob's content address.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.storage.backend import BlobBackend, ObjectMissing
from portway.storage.part_writer import (
    PartWriter,
    SessionState,
    pending_write,
    read_all,
    rehash,
    session_prefix,
)
from portway.storage.uploads import RunningHashes

LEASE = 15.0  # seconds a request holds a session without renewing (a dead node's session is
# writable again through another node after this; a streaming body renews every RENEW_EVERY)
MONOLITHIC = "uploads/whole-"  # monolithic uploads' temporary objects
HEALTH_PROBES = ".health"  # the readiness probe's objects, one per worker (observe/health.py)


class SessionRow(Protocol):
    @property
    def size(self) -> int: ...
    @property
    def state(self) -> str | None: ...
    @property
    def updated(self) -> float: ...


class SessionStore(Protocol):
    """Where the sessions' rows are (the metadata store's uploads table)."""

    async def get_upload(self, upload_id: str) -> SessionRow | None: ...
    async def claim_upload(
        self, upload_id: str, holder: str, until: float
    ) -> SessionRow | None: ...
    async def save_upload(
        self, upload_id: str, holder: str, size: int, state: str | None, until: float | None
    ) -> bool: ...


class PartUploads:
    def __init__(
        self,
        backend: BlobBackend,
        store: SessionStore,
        blob_key: Callable[[Digest], str],
        part_size: int,
        parts_in_flight: int = 1,
    ) -> None:
        self.backend = backend
        self.store = store
        self._blob_key = blob_key
        self.part_size = max(part_size, backend.part_minimum)
        self.in_flight = max(1, parts_in_flight)
        self.hashes = RunningHashes()
        self.holder = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuidlib.uuid4().hex[:12]}"

    # -- reading a session -------------------------------------------------------------
    async def new_upload(self) -> str:
        upload_id = str(uuidlib.uuid4())
        self.hashes.start(upload_id)
        return upload_id  # its row (size 0, no state) is the session

    async def upload_size(self, upload_id: str) -> int | None:
        row = await self.store.get_upload(upload_id)
        return None if row is None else row.size

    async def upload_mtime(self, upload_id: str) -> float | None:
        row = await self.store.get_upload(upload_id)
        return None if row is None else row.updated

    async def _claim(self, upload_id: str) -> _Lease:
        holder = f"{self.holder}:{uuidlib.uuid4().hex[:8]}"  # one per request
        row = await self.store.claim_upload(upload_id, holder, time.time() + LEASE)
        if row is not None:
            return _Lease(self.store, upload_id, holder, row.size, row.state)
        if await self.store.get_upload(upload_id) is None:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", f"upload {upload_id} not found")
        raise RegistryError(
            "BLOB_UPLOAD_INVALID",
            f"upload {upload_id} is busy: another request is writing or closing it",
        )

    # -- appending ---------------------------------------------------------------------
    async def append(
        self,
        upload_id: str,
        chunks: AsyncIterator[bytes],
        *,
        expected_length: int | None = None,
        expected_offset: int | None = None,
    ) -> int:
        lease = await self._claim(upload_id)
        try:
            start = lease.size
            if expected_offset is not None and start != expected_offset:
                raise RegistryError(
                    "RANGE_INVALID",
                    f"chunk starts at {expected_offset} but the upload is at offset {start}",
                )
            state = SessionState.load(lease.state)
            if state.closed is not None:
                raise RegistryError("BLOB_UPLOAD_INVALID", f"upload {upload_id} is being closed")
            hasher = self.hashes.at(upload_id, start)
            old_tail = state.tail
            writer = PartWriter(
                self.backend, lease.upload_id, state, self.part_size, self.in_flight, lease.renew
            )
            try:
                written = await writer.take(chunks, hasher)
                if expected_length is not None and written != expected_length:
                    raise RegistryError(
                        "SIZE_INVALID",
                        f"request body has {written} bytes, Content-Length said {expected_length}",
                    )
                await writer.finish()
                await lease.save(start + written, state.dump(), release=True)
            except BaseException:
                await writer.discard()
                raise
            if old_tail is not None and old_tail != state.tail:
                with contextlib.suppress(Exception):
                    await self.backend.delete(old_tail)
            self.hashes.advance(upload_id, start + written, hasher)
            return start + written
        except BaseException:
            self.hashes.forget(upload_id)
            raise
        finally:
            await lease.release()

    # -- closing -----------------------------------------------------------------------
    async def commit(self, upload_id: str, digest: Digest, size: int | None = None) -> int:
        lease = await self._claim(upload_id)
        try:
            total = lease.size
            if size is not None and total != size:
                raise RegistryError("SIZE_INVALID", f"upload has {total} bytes, expected {size}")
            state = SessionState.load(lease.state)
            if state.closed is None:
                state.closed = await self._close(upload_id, state)
                await lease.save(total, state.dump(), release=False)
            actual = self.hashes.take(upload_id, total, digest)
            if actual is None:  # this node did not see every byte, or sha512
                actual = await rehash(self.backend, state.closed, digest.algorithm)
            if actual != digest.hex:
                raise RegistryError(
                    "DIGEST_INVALID",
                    f"uploaded content has digest {digest.algorithm}:{actual}, not {digest}",
                )
            await self.backend.copy(state.closed, self._blob_key(digest))
        finally:
            await lease.release()
        await self._remove_objects(upload_id, state)
        return total

    async def _close(self, upload_id: str, state: SessionState) -> str:
        """The session's bytes as one object (not yet at the blob's address)."""
        if state.token is None:
            if state.tail is not None:
                return state.tail  # smaller than one part: the tail is the whole
            key = session_prefix(upload_id) + "empty"
            writer = await self.backend.create(key)
            await writer.commit()
            return key
        parts = list(state.parts)
        if state.tail is not None:
            data = await read_all(self.backend, state.tail)
            parts.append(
                await self.backend.put_part(
                    session_prefix(upload_id) + "data", state.token, len(parts) + 1, data
                )
            )
        key = session_prefix(upload_id) + "data"
        await self.backend.complete_parts(key, state.token, parts)
        return key

    async def _remove_objects(self, upload_id: str, state: SessionState) -> None:
        if state.token is not None and state.closed is None:
            with contextlib.suppress(ObjectMissing):
                await self.backend.abort_pending(pending_write(upload_id, state.token))
        keys = [k async for k in self.backend.list(session_prefix(upload_id))]
        for key in keys:
            with contextlib.suppress(Exception):
                await self.backend.delete(key)

    async def abort(self, upload_id: str) -> None:
        self.hashes.forget(upload_id)
        row = await self.store.get_upload(upload_id)
        state = SessionState.load(row.state if row is not None else None)
        await self._remove_objects(upload_id, state)

    # -- monolithic uploads ------------------------------------------------------------
    async def ingest(
        self, chunks: AsyncIterator[bytes], digest: Digest, expected_length: int | None = None
    ) -> int:
        """One request, one body: stream it into a temporary object while hashing it, verify,
        then copy it to the blob's address. No session row: nobody else continues it."""
        key = f"{MONOLITHIC}{uuidlib.uuid4().hex}"
        writer = await self.backend.create(key)
        hasher = hashlib.new(digest.algorithm)
        loop = asyncio.get_running_loop()
        hashing: asyncio.Future[None] | None = None  # hashed while the next piece is read
        try:
            async for chunk in chunks:
                if hashing is not None:
                    await hashing
                hashing = loop.run_in_executor(None, hasher.update, chunk)
                await writer.write(chunk)
            if hashing is not None:
                await hashing
            total = writer.size
            if expected_length is not None and total != expected_length:
                raise RegistryError(
                    "SIZE_INVALID",
                    f"request body has {total} bytes, Content-Length said {expected_length}",
                )
            if hasher.hexdigest() != digest.hex:
                raise RegistryError(
                    "DIGEST_INVALID",
                    f"uploaded content has digest {digest.algorithm}:{hasher.hexdigest()}, "
                    f"not {digest}",
                )
        except BaseException:
            with contextlib.suppress(Exception):
                await writer.abort()
            raise
        await writer.commit()
        try:
            await self.backend.copy(key, self._blob_key(digest))
        finally:
            with contextlib.suppress(Exception):
                await self.backend.delete(key)
        return total

    # -- the purge ---------------------------------------------------------------------
    async def purge_pending(self, max_age: float) -> int:
        """Multipart writes and temporary objects a killed node left, once `max_age` old;
        a session still in use keeps its own."""
        cutoff = time.time() - max_age
        gone = 0
        for pending in await self.backend.pending_writes(max_age):
            upload_id = _session_of(pending.key)
            row = await self.store.get_upload(upload_id) if upload_id else None
            if row is not None and row.updated >= cutoff:
                continue
            with contextlib.suppress(ObjectMissing):
                await self.backend.abort_pending(pending)
            gone += 1
        async for key in self.backend.list("uploads"):
            if key.startswith(MONOLITHIC):
                gone += await self._delete_older(key, cutoff)
        # A worker killed between the probe's write and its delete leaves its object.
        async for key in self.backend.list(HEALTH_PROBES):
            gone += await self._delete_older(key, cutoff)
        return gone

    async def _delete_older(self, key: str, cutoff: float) -> int:
        info = await self.backend.stat(key)
        if info is None or info.mtime >= cutoff:
            return 0
        with contextlib.suppress(ObjectMissing):
            await self.backend.delete(key)
        return 1


class _Lease:
    """One request's hold on a session: what it found, and the way to record what it did."""

    def __init__(
        self, store: SessionStore, upload_id: str, holder: str, size: int, state: str | None
    ) -> None:
        self.store = store
        self.upload_id = upload_id
        self.holder = holder
        self.size = size
        self.state = state
        self.held = True

    async def save(self, size: int, state: str, *, release: bool) -> None:
        until = None if release else time.time() + LEASE
        if not await self.store.save_upload(self.upload_id, self.holder, size, state, until):
            self.held = False
            raise RegistryError(
                "BLOB_UPLOAD_INVALID",
                f"upload {self.upload_id} was taken over by another request (lease expired)",
            )
        self.size, self.state = size, state
        self.held = not release

    async def renew(self) -> None:
        if self.held:
            await self.store.save_upload(
                self.upload_id, self.holder, self.size, self.state, time.time() + LEASE
            )

    async def release(self) -> None:
        if self.held:
            self.held = False
            with contextlib.suppress(Exception):
                await self.store.save_upload(
                    self.upload_id, self.holder, self.size, self.state, None
                )


def _session_of(key: str | None) -> str | None:
    if key is None or not key.startswith("uploads/"):
        return None
    rest = key[len("uploads/") :]
    return rest.split("/", 1)[0] if "/" in rest else None
