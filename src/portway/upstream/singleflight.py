"""Share one upstream request among concurrent callers.

``SingleFlight`` runs one coroutine per key and hands its result (or exception) to every
caller that asked for that key while it ran: N cold pulls of a manifest make one request.

``SharedDownloads`` does the same for streams: the first caller starts a download that is
written to a local spool file; every caller (the first included) gets a ``SpoolReader`` that
follows the file as it grows, so the first client is served as the bytes arrive and the
twentieth client of the same blob costs no upstream request at all.

Both run the shared work in its own task: a caller that goes away (a client hanging up)
cancels only its own wait, never the download the others (and the cache) depend on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_CHUNK_SIZE = 1024 * 1024


class SingleFlight(Generic[K, V]):
    """Concurrent callers for the same key share one in-flight coroutine's result."""

    def __init__(self) -> None:
        self._calls: dict[K, asyncio.Task[V]] = {}

    def in_flight(self, key: K) -> bool:
        return key in self._calls

    async def do(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        """Return ``await work()``, or join the call already running for ``key``.

        Exceptions reach every caller. The entry is removed when the work ends, so the next
        call after that starts afresh (no result caching here).
        """
        task = self._calls.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._calls[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: K, done: asyncio.Task[V]) -> None:
        if self._calls.get(key) is done:
            del self._calls[key]
        if not done.cancelled():
            done.exception()  # mark retrieved: nobody may be waiting any more


class DownloadCancelledError(RuntimeError):
    """The shared download was cancelled (server shutting down) before it completed."""


class Spool:
    """A local file one writer fills while any number of readers follow it.

    The writer calls ``set_size`` once it knows the length (optional), ``write`` for each
    chunk, then ``finish`` or ``fail``. Readers see exactly the bytes written so far.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.written = 0
        self.size: int | None = None
        self.started = False
        self.done = False
        self.error: BaseException | None = None
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self) -> None:
        await self._changed.wait()

    def set_size(self, size: int | None) -> None:
        """Announce the total length (``None`` when unknown); readers waiting in
        ``SpoolReader.wait_started`` are released."""
        self.size = size
        self.started = True
        self._notify()

    async def write(self, chunk: bytes) -> None:
        if self._fd is None:
            raise RuntimeError(f"spool {self.path} is closed for writing")
        view = memoryview(chunk)
        while view:
            # Page-cache writes of one chunk are fast enough to do on the loop.
            n = os.write(self._fd, view)
            view = view[n:]
        self.written += len(chunk)
        self.started = True
        self._notify()

    def finish(self) -> None:
        self._close_fd()
        self.started = self.done = True
        self._notify()

    def fail(self, error: BaseException) -> None:
        self._close_fd()
        self.error = error
        self.started = self.done = True
        self._notify()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def reader(self, offset: int = 0) -> SpoolReader:
        return SpoolReader(self, offset)


class SpoolReader:
    """Follows a ``Spool`` from ``offset``; iterate it for bytes. Close it (or use
    ``async with``) when done. The file is opened at construction, so the spool may be
    unlinked or moved afterwards without harm."""

    def __init__(self, spool: Spool, offset: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.spool = spool
        self.position = offset
        self.chunk_size = chunk_size
        self._fd: int | None = os.open(spool.path, os.O_RDONLY)

    async def wait_started(self) -> int | None:
        """Wait until the writer announced a size, wrote a byte or ended; return the size
        (``None`` when unknown) or raise the writer's failure."""
        spool = self.spool
        while not spool.started:
            await spool.wait_change()
        if spool.error is not None and spool.written == 0:
            raise spool.error
        return spool.size

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks()

    async def chunks(self) -> AsyncIterator[bytes]:
        spool = self.spool
        while True:
            if self._fd is None:
                raise RuntimeError("spool reader is closed")
            available = spool.written - self.position
            if available > 0:
                data = os.pread(self._fd, min(available, self.chunk_size), self.position)
                if not data:  # cannot happen unless someone truncated the file
                    raise RuntimeError(f"spool {spool.path} shrank while being read")
                self.position += len(data)
                yield data
                continue
            if spool.error is not None:
                raise spool.error
            if spool.done:
                return
            await spool.wait_change()

    async def more(self) -> int:
        """Wait until bytes past `position` are written (returns how many), or the writer
        finished (returns 0); raises the writer's failure. For callers that send the spool
        file themselves (sendfile) and then advance `position`."""
        spool = self.spool
        while True:
            available = spool.written - self.position
            if available > 0:
                return available
            if spool.error is not None:
                raise spool.error
            if spool.done:
                return 0
            await spool.wait_change()

    def open_file(self) -> BinaryIO:
        """A file object over this reader's own descriptor (valid after the spool moved)."""
        if self._fd is None:
            raise RuntimeError("spool reader is closed")
        return os.fdopen(os.dup(self._fd), "rb")

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        # A reader handed out but never iterated (a HEAD answered from the size alone, a
        # stream the server dropped before starting it) must not leak its descriptor.
        self.close()

    async def __aenter__(self) -> SpoolReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


Fill = Callable[[Spool], Awaitable[None]]


class SharedDownloads(Generic[K]):
    """One download per key at a time, fanned out to every reader through a spool file.

    ``follow(key, fill)`` returns a reader at once. If no download for ``key`` is running,
    it creates a spool in ``spool_dir`` and starts ``fill(spool)`` in a task; ``fill`` writes
    the bytes (and typically also feeds the blob store, committing after the digest checks).
    When ``fill`` returns the spool is finished, when it raises every reader gets the error;
    either way the entry is dropped and the spool file is unlinked (``fill`` may have moved
    it away already). Readers that joined keep reading through their open file.
    """

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self._active: dict[K, tuple[Spool, asyncio.Task[None]]] = {}

    def in_flight(self, key: K) -> bool:
        return key in self._active

    def follow(self, key: K, fill: Fill, offset: int = 0) -> SpoolReader:
        entry = self._active.get(key)
        if entry is None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            spool = Spool(self.spool_dir / f"spool-{uuid.uuid4().hex}")
            task = asyncio.ensure_future(self._run(key, spool, fill))
            task.add_done_callback(_retrieve)
            entry = self._active[key] = (spool, task)
        return entry[0].reader(offset)

    async def wait(self, key: K) -> None:
        """Wait for the running download of ``key`` (if any) to end; never raises its error."""
        entry = self._active.get(key)
        if entry is not None:
            await asyncio.wait([entry[1]])

    async def _run(self, key: K, spool: Spool, fill: Fill) -> None:
        try:
            await fill(spool)
        except asyncio.CancelledError:
            spool.fail(DownloadCancelledError(f"download into {spool.path} was cancelled"))
            raise
        except BaseException as exc:
            spool.fail(exc)
            raise
        else:
            spool.finish()
        finally:
            if self._active.get(key, (None,))[0] is spool:
                del self._active[key]
            with contextlib.suppress(FileNotFoundError):
                spool.path.unlink()


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
