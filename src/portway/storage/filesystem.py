"""Filesystem BlobBackend: one file per key under a root folder; moves are atomic renames."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from portway.observe.store_latency import timed_backend
from portway.storage.backend import (
    ObjectInfo,
    ObjectMissing,
    Part,
    PartBody,
    PendingWrite,
    body_size,
)
from portway.storage.direct import DirectAppender, write_all

READ_CHUNK = 1024 * 1024


SYNC_FILE_RANGE_WRITE = 2


def _writeback_starter() -> Callable[[int, int, int], object] | None:
    """Linux's sync_file_range(2), which Python's os module lacks; None where unavailable."""
    with contextlib.suppress(OSError, AttributeError):
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
        call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        call.restype = ctypes.c_int

        def start(fd: int, offset: int, length: int) -> object:
            return call(fd, offset, length, SYNC_FILE_RANGE_WRITE)

        return start
    return None


_start_writeback = _writeback_starter()


class ObjectBusy(Exception):
    """Another writer (in this process or another worker) holds the object."""


@timed_backend("filesystem", "writev_sync", "close")
class FileWriter:
    """Writes go to the file from a worker thread, so hashing and disk I/O overlap the socket.

    An appending writer holds an exclusive `flock` on the file until `close`, and only on the
    file still at its path: a session being committed (renamed into the blob tree) or written
    by another request cannot be appended to, so a published blob never changes.
    """

    def __init__(self, path: Path, append: bool) -> None:
        if not append:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._size = 0
            self._direct: DirectAppender | None = None
            return
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # no O_CREAT: a moved file stays moved
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ObjectBusy(str(path)) from None
            held = os.fstat(fd)
            current = os.stat(path)  # FileNotFoundError when it was moved away meanwhile
            if (held.st_ino, held.st_dev) != (current.st_ino, current.st_dev):
                raise FileNotFoundError(str(path))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._size = held.st_size
        self._direct = DirectAppender.open(path)  # whole blocks around the page cache

    @property
    def size(self) -> int:
        return self._size

    def fileno(self) -> int:
        return self._fd

    def truncate_sync(self, size: int) -> None:
        """Cut the file back to `size` bytes (under the lock, unlike a truncate by path)."""
        os.ftruncate(self._fd, size)
        self._size = size

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self.write_sync, data)

    def write_sync(self, data: bytes) -> None:
        self.writev_sync([data])

    def writev_sync(self, chunks: list[bytes]) -> None:
        """Write the chunks in order with as few system calls as possible, no joining copy.
        An appending writer (an upload session) writes whole blocks with O_DIRECT where the
        filesystem allows (portway.storage.direct, ADR 33); what goes through the page cache
        starts writing back to disk at once, so the fsync that publishes the blob finds
        little left to do (ADR 5)."""
        start = self._size
        views = [memoryview(c) for c in chunks if c]
        if self._direct is not None and self._direct.active:
            self._size = self._direct.append(self._fd, start, views)
            return
        self._size += write_all(self._fd, views)
        if _start_writeback is not None and self._size > start:
            _start_writeback(self._fd, start, self._size - start)

    async def close(self, *, sync: bool = True) -> None:
        if sync:  # the thread closes too: a cancelled wait must not close what it syncs
            await asyncio.to_thread(self._sync_and_close)
        else:  # closing waits for no disk: done here, not through a pool thread
            self._close_now()

    def _sync_and_close(self) -> None:
        try:
            os.fsync(self._fd)
        finally:
            self._close_now()

    def _close_now(self) -> None:
        if self._direct is not None:
            self._direct.close()
        os.close(self._fd)


@timed_backend("filesystem", answers=(ObjectBusy,))
class FilesystemBackend:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_text = str(root)
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad storage key {key!r}")
        return self.root / key

    def _path_text(self, key: str) -> str:
        """`_path(key)` as a string, without building a Path (every blob GET stats one)."""
        if key.startswith("/") or key.endswith("/") or ".." in key.split("/"):
            return str(self._path(key))
        return f"{self._root_text}/{key}"

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path_text(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        remaining = length
        with open(self._path(key), "rb") as f:
            f.seek(offset)
            while remaining is None or remaining > 0:
                want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await asyncio.to_thread(f.read, want)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    async def writer(self, key: str, append: bool = False) -> FileWriter:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileWriter(path, append)

    async def move(self, src: str, dst: str) -> None:
        target = self._path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)

        def _move() -> None:
            os.replace(self._path(src), target)
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename itself survives a crash
            finally:
                os.close(fd)

        await asyncio.to_thread(_move)

    async def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            for child in sorted(path.rglob("*"), reverse=True):
                child.unlink() if not child.is_dir() else child.rmdir()
            path.rmdir()
        else:
            path.unlink(missing_ok=True)

    async def list(self, prefix: str) -> AsyncIterator[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return
        for dirpath, dirs, files in os.walk(base):
            if dirpath == str(self.root) and INCOMING in dirs:
                dirs.remove(INCOMING)  # writes not yet committed are no objects
            for name in files:
                yield os.path.relpath(os.path.join(dirpath, name), self.root)

    # -- the BlobBackend protocol's write-once objects (backend.py) ------------------------
    @property
    def _incoming(self) -> Path:
        return self.root / INCOMING

    async def create(self, key: str) -> IncomingWriter:
        """A new object written under `.incoming/` and renamed to `key` by `commit`."""
        target = self._path(key)
        self._incoming.mkdir(exist_ok=True)
        return IncomingWriter(self._incoming / uuid.uuid4().hex, target, key)

    async def copy(self, src: str, dst: str) -> None:
        """A full copy (copy_file_range where the kernel has it), published by rename; the
        upload path keeps its cheaper `move` as this backend's own optimisation."""
        source, target = self._path(src), self._path(dst)
        self._incoming.mkdir(exist_ok=True)
        scratch = self._incoming / uuid.uuid4().hex

        def _copy() -> None:
            try:
                shutil.copyfile(source, scratch)
            except FileNotFoundError:
                raise ObjectMissing(src) from None
            try:
                _publish(scratch, target)
            except BaseException:
                scratch.unlink(missing_ok=True)
                raise

        await asyncio.to_thread(_copy)

    # -- resumable multipart writes: parts are files under `.incoming/<token>.parts/` --------
    part_minimum = 1

    def _parts_dir(self, token: str) -> Path:
        if not token.isalnum():
            raise ValueError(f"bad multipart token {token!r}")
        return self._incoming / f"{token}.parts"

    async def begin_parts(self, key: str) -> str:
        self._path(key)  # a bad key fails now, not at the end
        token = uuid.uuid4().hex
        self._parts_dir(token).mkdir(parents=True)
        return token

    async def put_part(self, key: str, token: str, number: int, data: PartBody) -> Part:
        folder = self._parts_dir(token)
        if not folder.is_dir():
            raise ObjectMissing(f"multipart write {token}")
        size = body_size(data)

        def _put() -> None:
            scratch = folder / f".{number}.{uuid.uuid4().hex}"
            scratch.write_bytes(data if isinstance(data, bytes) else data.getbuffer())
            _publish(scratch, folder / str(number))

        await asyncio.to_thread(_put)
        return Part(number=number, etag=str(size), size=size)

    async def complete_parts(self, key: str, token: str, parts: Sequence[Part]) -> ObjectInfo:
        folder = self._parts_dir(token)
        scratch = self._incoming / uuid.uuid4().hex

        def _complete() -> int:
            try:
                with open(scratch, "wb") as out:
                    for part in parts:
                        with open(folder / str(part.number), "rb") as src:
                            shutil.copyfileobj(src, out, READ_CHUNK)
                _publish(scratch, self._path(key))
            except FileNotFoundError:
                scratch.unlink(missing_ok=True)
                raise ObjectMissing(f"multipart write {token}") from None
            shutil.rmtree(folder, ignore_errors=True)
            return sum(p.size for p in parts)

        size = await asyncio.to_thread(_complete)
        return ObjectInfo(key=key, size=size, mtime=time.time())

    async def presign_get(self, key: str, expires_in: float) -> str | None:
        return None  # a folder has no URL of its own: Portway streams (or sendfiles) it

    async def pending_writes(self, older_than: float) -> Sequence[PendingWrite]:
        cutoff = time.time() - older_than
        found: list[PendingWrite] = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._incoming):
                with contextlib.suppress(FileNotFoundError):
                    mtime = entry.stat().st_mtime
                    if mtime < cutoff:
                        found.append(PendingWrite(key=None, token=entry.name, started=mtime))
        return found

    async def abort_pending(self, pending: PendingWrite) -> None:
        if "/" in pending.token or pending.token.startswith("."):
            raise ValueError(f"bad pending write {pending.token!r}")
        path = self._incoming / pending.token
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


INCOMING = ".incoming"  # objects being written; never a key (keys never start with a dot)


def _publish(scratch: Path, target: Path) -> None:
    """fsync `scratch`, rename it to `target`, fsync the folder: the object survives a crash."""
    fd = os.open(scratch, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(scratch, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@timed_backend("filesystem", "commit", "abort")  # its writes are its FileWriter's
class IncomingWriter:
    """Write-once object: bytes go to a scratch file from a worker thread; `commit` renames."""

    def __init__(self, scratch: Path, target: Path, key: str) -> None:
        self._scratch = scratch
        self._target = target
        self._key = key
        self._file = FileWriter(scratch, append=False)
        self._open = True

    @property
    def size(self) -> int:
        return self._file.size

    async def write(self, data: bytes) -> None:
        if not self._open:
            raise ValueError("write after commit or abort")
        await self._file.write(data)

    async def commit(self) -> ObjectInfo:
        if not self._open:
            raise ValueError("commit after commit or abort")
        self._open = False
        try:
            await self._file.close(sync=True)
            await asyncio.to_thread(_publish, self._scratch, self._target)
        except BaseException:
            self._scratch.unlink(missing_ok=True)
            raise
        return ObjectInfo(key=self._key, size=self._file.size, mtime=time.time())

    async def abort(self) -> None:
        if not self._open:
            return
        self._open = False
        with contextlib.suppress(OSError):
            await self._file.close(sync=False)
        self._scratch.unlink(missing_ok=True)
