"""An S3 backend opened on first use, inside the running event loop.

The composition root is built before any loop runs (and each worker builds its own), while
aiobotocore's client belongs to the loop that opened it: this wrapper opens the real
`S3Backend` at the first call and answers the `BlobBackend` protocol by delegating. Its
calls, and those of the writers it hands out, are timed here (portway.observe.store_latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from portway.observe.store_latency import timed_backend
from portway.storage.backend import ObjectInfo, ObjectWriter, Part, PartBody, PendingWrite
from portway.storage.s3 import MIN_PART, S3Backend, S3Settings, S3Writer
from portway.storage.s3raw import RawBody

M_MMAP_THRESHOLD = -3  # glibc mallopt(3)
WARM_UP = 5.0  # seconds a worker's start waits for its first S3 answer
PART_MMAP = 1024 * 1024  # the parts, and the 1 MiB pieces of a body read from the socket


def map_large_buffers(threshold: int = PART_MMAP) -> None:
    """Have glibc allocate buffers from `threshold` bytes up (the parts an S3 node holds) as
    their own mappings, returned to the system when freed. Its default threshold rises after
    the first such buffer is freed, and the parts then fragment the heap: a 2 GiB push grew a
    worker past 200 MB resident that way, where it stays near 100 MB with this."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold)


timed_backend("s3", "write", "commit", "abort")(S3Writer)


@timed_backend("s3")
class LazyS3Backend:
    part_minimum = MIN_PART

    def __init__(self, settings: S3Settings) -> None:
        map_large_buffers()
        self.settings = settings
        self._backend: S3Backend | None = None
        self._opening: asyncio.Lock | None = None

    async def _open(self) -> S3Backend:
        if self._backend is not None:
            return self._backend
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._backend is None:
                self._backend = await S3Backend.open(self.settings)
        return self._backend

    async def connect(self) -> None:
        """Open the client now (a worker at start), not on its first request: botocore's
        setup takes a quarter of a second, and its first call about 50 ms of CPU more, so
        one HEAD of a key that is not there is sent too (at most WARM_UP seconds; a bucket
        that does not answer yet is not an error here)."""
        backend = await self._open()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(WARM_UP):
                await backend.stat("portway-warm-up")

    async def close(self) -> None:
        if self._backend is not None:
            backend, self._backend = self._backend, None
            await backend.close()

    def local_path(self, key: str) -> Path | None:
        return None

    async def stat(self, key: str) -> ObjectInfo | None:
        return await (await self._open()).stat(key)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        async for chunk in (await self._open()).read(key, offset, length):
            yield chunk

    async def open_raw(self, key: str) -> RawBody | None:
        return await (await self._open()).open_raw(key)

    async def create(self, key: str) -> ObjectWriter:
        return await (await self._open()).create(key)

    async def copy(self, src: str, dst: str) -> None:
        await (await self._open()).copy(src, dst)

    async def delete(self, key: str) -> None:
        await (await self._open()).delete(key)

    async def list(self, prefix: str) -> AsyncIterator[str]:
        async for key in (await self._open()).list(prefix):
            yield key

    async def presign_get(self, key: str, expires_in: float) -> str | None:
        return await (await self._open()).presign_get(key, expires_in)

    async def begin_parts(self, key: str) -> str:
        return await (await self._open()).begin_parts(key)

    async def put_part(self, key: str, token: str, number: int, data: PartBody) -> Part:
        return await (await self._open()).put_part(key, token, number, data)

    async def complete_parts(self, key: str, token: str, parts: Sequence[Part]) -> ObjectInfo:
        return await (await self._open()).complete_parts(key, token, parts)

    async def pending_writes(self, older_than: float) -> Sequence[PendingWrite]:
        return await (await self._open()).pending_writes(older_than)

    async def abort_pending(self, pending: PendingWrite) -> None:
        await (await self._open()).abort_pending(pending)
