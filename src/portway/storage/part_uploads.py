"""Upload sessions kept in parts (S3): no node affinity (ADR 20).

A session's state lives where every node sees it: the metadata store's uploads row holds
the bytes stored so far and, as JSON, the multipart upload's token and parts and the key of
the tail object; the bucket holds the parts and the tail. The tail is what a request left
below the backend's part minimum (5 MiB on S3): it is stored as an object of its own and
becomes the head of the next part. A request takes the session's lease (a row lease, so two
requests on any nodes never write one session at once), streams its body into parts of
`part_size` (at most `parts_in_flight` sent at a time: bounded memory, whatever the body's
size), then records the new state and gives the lease up.

The closing PUT completes the multipart upload to the session's own key, verifies the digest
(with the running sha256 when this node saw every byte, else by reading the object back),
and only then copies it (server-side) to the blob's content address.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from portway.oci.digest import Digest
from portway.oci.errors import RegistryError
from portway.storage.backend import BlobBackend, ObjectMissing, Part, PendingWrite
from portway.storage.uploads import RunningHashes

LEASE = 60.0  # seconds a request holds a session without renewing
MONOLITHIC = "uploads/whole-"  # monolithic uploads' temporary objects


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


@dataclass
class _State:
    token: str | None = None  # the multipart write, once a part was stored
    parts: list[Part] = field(default_factory=list)
    tail: str | None = None  # key of the bytes past the last part
    tail_size: int = 0
    closed: str | None = None  # key of the completed object, once the closing PUT made it

    @classmethod
    def load(cls, text: str | None) -> _State:
        if not text:
            return cls()
        doc = json.loads(text)
        parts = [Part(number=n, etag=e, size=s) for n, e, s in doc.get("parts", [])]
        return cls(
            doc.get("token"), parts, doc.get("tail"), doc.get("tail_size", 0), doc.get("closed")
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "token": self.token,
                "parts": [[p.number, p.etag, p.size] for p in self.parts],
                "tail": self.tail,
                "tail_size": self.tail_size,
                "closed": self.closed,
            }
        )


def _session_prefix(upload_id: str) -> str:
    return f"uploads/{upload_id}/"


class PartUploads:
    def __init__(
        self,
        backend: BlobBackend,
        store: SessionStore,
        blob_key: Callable[[Digest], str],
        part_size: int,
        parts_in_flight: int = 2,
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
            state = _State.load(lease.state)
            if state.closed is not None:
                raise RegistryError("BLOB_UPLOAD_INVALID", f"upload {upload_id} is being closed")
            hasher = self.hashes.at(upload_id, start)
            old_tail = state.tail
            writer = _PartWriter(self, lease, state)
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
            state = _State.load(lease.state)
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

    async def _close(self, upload_id: str, state: _State) -> str:
        """The session's bytes as one object (not yet at the blob's address)."""
        if state.token is None:
            if state.tail is not None:
                return state.tail  # smaller than one part: the tail is the whole
            key = _session_prefix(upload_id) + "empty"
            writer = await self.backend.create(key)
            await writer.commit()
            return key
        parts = list(state.parts)
        if state.tail is not None:
            data = await read_all(self.backend, state.tail)
            parts.append(
                await self.backend.put_part(
                    _session_prefix(upload_id) + "data", state.token, len(parts) + 1, data
                )
            )
        key = _session_prefix(upload_id) + "data"
        await self.backend.complete_parts(key, state.token, parts)
        return key

    async def _remove_objects(self, upload_id: str, state: _State) -> None:
        if state.token is not None and state.closed is None:
            with contextlib.suppress(ObjectMissing):
                await self.backend.abort_pending(_pending(upload_id, state.token))
        keys = [k async for k in self.backend.list(_session_prefix(upload_id))]
        for key in keys:
            with contextlib.suppress(Exception):
                await self.backend.delete(key)

    async def abort(self, upload_id: str) -> None:
        self.hashes.forget(upload_id)
        row = await self.store.get_upload(upload_id)
        state = _State.load(row.state if row is not None else None)
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
        try:
            async for chunk in chunks:
                await loop.run_in_executor(None, hasher.update, chunk)
                await writer.write(chunk)
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
            if not key.startswith(MONOLITHIC):
                continue
            info = await self.backend.stat(key)
            if info is not None and info.mtime < cutoff:
                await self.backend.delete(key)
                gone += 1
        return gone


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


def _pending(upload_id: str, token: str) -> PendingWrite:
    return PendingWrite(key=_session_prefix(upload_id) + "data", token=token, started=0.0)


def _session_of(key: str | None) -> str | None:
    if key is None or not key.startswith("uploads/"):
        return None
    rest = key[len("uploads/") :]
    return rest.split("/", 1)[0] if "/" in rest else None


async def read_all(backend: BlobBackend, key: str) -> bytes:
    return b"".join([chunk async for chunk in backend.read(key)])


async def rehash(backend: BlobBackend, key: str, algorithm: str) -> str:
    """Hash a stored object by reading it back (a session another node began)."""
    hasher = hashlib.new(algorithm)
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    async for chunk in backend.read(key):
        if pending is not None:
            await pending
        pending = loop.run_in_executor(None, hasher.update, chunk)
    if pending is not None:
        await pending
    return hasher.hexdigest()


class _PartWriter:
    """One request's bytes into the session's parts, the old tail first; at most
    `in_flight` parts being sent while the next one fills."""

    def __init__(self, owner: PartUploads, lease: _Lease, state: _State) -> None:
        self.owner = owner
        self.backend = owner.backend
        self.upload_id = lease.upload_id
        self.state = state
        self.lease = lease
        self.began = False
        self.key = _session_prefix(self.upload_id) + "data"
        self.buffer = bytearray()
        self.sending: list[asyncio.Task[Part]] = []
        self.new_parts: list[Part] = []
        self.new_tail: str | None = None
        self.renewed = time.monotonic()

    async def take(self, chunks: AsyncIterator[bytes], hasher: Any | None) -> int:
        if self.state.tail is not None:
            self.buffer += await read_all(self.backend, self.state.tail)
        written = 0
        loop = asyncio.get_running_loop()
        async for chunk in chunks:
            if hasher is not None:
                await loop.run_in_executor(None, hasher.update, chunk)
            self.buffer += chunk
            written += len(chunk)
            while len(self.buffer) >= self.owner.part_size:
                await self._send(bytes(self.buffer[: self.owner.part_size]))
                del self.buffer[: self.owner.part_size]
        return written

    async def _send(self, data: bytes) -> None:
        if self.state.token is None:
            self.state.token = await self.backend.begin_parts(self.key)
            self.began = True
        while len(self.sending) >= self.owner.in_flight:
            self.new_parts.append(await self.sending.pop(0))
        number = len(self.state.parts) + len(self.new_parts) + len(self.sending) + 1
        token = self.state.token
        self.sending.append(
            asyncio.create_task(self.backend.put_part(self.key, token, number, data))
        )
        if time.monotonic() - self.renewed > LEASE / 3:  # a long body: keep the lease
            self.renewed = time.monotonic()
            await self.lease.renew()

    async def finish(self) -> None:
        """Send what is part-sized, store the rest as the new tail, update `state`."""
        if len(self.buffer) >= self.backend.part_minimum:
            await self._send(bytes(self.buffer))
            self.buffer = bytearray()
        while self.sending:
            self.new_parts.append(await self.sending.pop(0))
        self.state.parts = [*self.state.parts, *self.new_parts]
        if self.buffer:
            self.new_tail = f"{_session_prefix(self.upload_id)}tail-{uuidlib.uuid4().hex[:12]}"
            writer = await self.backend.create(self.new_tail)
            await writer.write(bytes(self.buffer))
            await writer.commit()
            self.state.tail, self.state.tail_size = self.new_tail, len(self.buffer)
        elif self.state.tail is not None:
            self.state.tail, self.state.tail_size = None, 0
        self.buffer = bytearray()

    async def discard(self) -> None:
        """A failed request: stop its parts (stored ones are overwritten by the next
        request's), drop the tail it stored; the recorded state still holds."""
        for task in self.sending:
            task.cancel()
        for task in self.sending:
            with contextlib.suppress(BaseException):
                await task
        self.sending = []
        self.buffer = bytearray()
        if self.new_tail is not None:
            with contextlib.suppress(Exception):
                await self.backend.delete(self.new_tail)
        if self.began and self.state.token is not None:  # a multipart write this request began
            with contextlib.suppress(Exception):
                await self.backend.abort_pending(_pending(self.upload_id, self.state.token))
