"""One request's bytes into an upload session's parts (part_uploads.py), and the session
state it updates: the multipart write's token and parts, and the tail object."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from portway.storage.backend import BlobBackend, Part, PendingWrite

RENEW_EVERY = 5.0  # seconds between lease renewals while a long body streams


def session_prefix(upload_id: str) -> str:
    return f"uploads/{upload_id}/"


@dataclass
class SessionState:
    token: str | None = None  # the multipart write, once a part was stored
    parts: list[Part] = field(default_factory=list)
    tail: str | None = None  # key of the bytes past the last part
    tail_size: int = 0
    closed: str | None = None  # key of the completed object, once the closing PUT made it

    @classmethod
    def load(cls, text: str | None) -> SessionState:
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


def pending_write(upload_id: str, token: str) -> PendingWrite:
    return PendingWrite(key=session_prefix(upload_id) + "data", token=token, started=0.0)


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


class PartWriter:
    """One request's bytes into the session's parts, the old tail first; at most
    `in_flight` parts being sent while the next one fills."""

    def __init__(
        self,
        backend: BlobBackend,
        upload_id: str,
        state: SessionState,
        part_size: int,
        in_flight: int,
        renew: Callable[[], Awaitable[None]],
    ) -> None:
        self.backend = backend
        self.upload_id = upload_id
        self.state = state
        self.part_size = part_size
        self.in_flight = in_flight
        self.renew = renew
        self.began = False
        self.key = session_prefix(self.upload_id) + "data"
        self.part = io.BytesIO()  # the part filling; sent as it is (backend.PartBody)
        self.sending: list[asyncio.Task[Part]] = []
        self.new_parts: list[Part] = []
        self.new_tail: str | None = None
        self.renewed = time.monotonic()

    @property
    def buffered(self) -> int:
        return self.part.tell()

    async def take(self, chunks: AsyncIterator[bytes], hasher: Any | None) -> int:
        """Read the body into parts of `part_size`: each piece is copied into the part
        filling as it arrives (once, then dropped), and a full part goes out as it is."""
        if self.state.tail is not None:
            await self._add(await read_all(self.backend, self.state.tail))
        written = 0
        loop = asyncio.get_running_loop()
        hashing: asyncio.Future[None] | None = None  # the piece before, hashed while we read
        try:
            async for chunk in chunks:
                if hasher is not None:
                    if hashing is not None:
                        await hashing
                    hashing = loop.run_in_executor(None, hasher.update, chunk)
                await self._add(chunk)
                written += len(chunk)
        finally:
            if hashing is not None:
                await hashing  # the hasher is whole (or dropped with a failed request)
        return written

    async def _add(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            room = self.part_size - self.part.tell()
            self.part.write(view[:room])
            view = view[room:]
            if self.part.tell() >= self.part_size:
                await self._send(self._take_part())

    def _take_part(self) -> io.BytesIO:
        part, self.part = self.part, io.BytesIO()
        part.seek(0)
        return part

    async def _send(self, data: io.BytesIO) -> None:
        if self.state.token is None:
            self.state.token = await self.backend.begin_parts(self.key)
            self.began = True
        while len(self.sending) >= self.in_flight:
            self.new_parts.append(await self.sending.pop(0))
        number = len(self.state.parts) + len(self.new_parts) + len(self.sending) + 1
        token = self.state.token
        self.sending.append(
            asyncio.create_task(self.backend.put_part(self.key, token, number, data))
        )
        if time.monotonic() - self.renewed > RENEW_EVERY:  # a long body: keep the lease
            self.renewed = time.monotonic()
            await self.renew()

    async def finish(self) -> None:
        """Send what is part-sized, store the rest as the new tail, update `state`."""
        if self.buffered >= self.backend.part_minimum:
            await self._send(self._take_part())
        while self.sending:
            self.new_parts.append(await self.sending.pop(0))
        self.state.parts = [*self.state.parts, *self.new_parts]
        if self.buffered:
            data = self._take_part().getvalue()  # no copy: the BytesIO's own bytes
            self.new_tail = f"{session_prefix(self.upload_id)}tail-{uuidlib.uuid4().hex[:12]}"
            writer = await self.backend.create(self.new_tail)
            await writer.write(data)
            await writer.commit()
            self.state.tail, self.state.tail_size = self.new_tail, len(data)
        elif self.state.tail is not None:
            self.state.tail, self.state.tail_size = None, 0

    async def discard(self) -> None:
        """A failed request: stop its parts (stored ones are overwritten by the next
        request's), drop the tail it stored; the recorded state still holds."""
        for task in self.sending:
            task.cancel()
        for task in self.sending:
            with contextlib.suppress(BaseException):
                await task
        self.sending = []
        self.part = io.BytesIO()
        if self.new_tail is not None:
            with contextlib.suppress(Exception):
                await self.backend.delete(self.new_tail)
        if self.began and self.state.token is not None:  # a multipart write this request began
            with contextlib.suppress(Exception):
                await self.backend.abort_pending(pending_write(self.upload_id, self.state.token))
