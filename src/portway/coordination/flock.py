"""Locks on one host: one `flock`'d file per name in a folder (the blob store's lock folder).

Every process that opens the same folder shares the locks: the workers of a server, `portway`
commands, and several servers of one host that share a storage path. Locks are polled, never
waited for in a thread: a thread blocked in `flock` per waiting request could exhaust the
executor the holder needs for hashing and writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

POLL_MIN = 0.002  # seconds between looks while a holder makes progress
POLL_MAX = 0.05  # and when nothing moved for a while


class WorkerLock:
    """An exclusive lock on `<directory>/<name>.lock` (the folder must exist) among processes,
    and among lock objects of one process: each holds its own descriptor. The holder removes
    the file when it releases; an inode check after locking keeps that safe."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / f"{name}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)  # a holder removed that file before we locked it: take a fresh one

    async def acquire(self) -> None:
        delay = POLL_MIN
        while not self.try_acquire():
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


class FileLock:
    """`WorkerLock` behind the `Lock` protocol."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self._lock = WorkerLock(directory, name)

    @property
    def held(self) -> bool:
        return self._lock.held

    async def try_acquire(self) -> bool:
        return self._lock.try_acquire()

    async def acquire(self) -> None:
        await self._lock.acquire()

    async def release(self) -> None:
        self._lock.release()


class FileLocks:
    """`Locks` in a folder; `directory` is called on each new lock (it makes the folder)."""

    def __init__(self, directory: Callable[[], Path]) -> None:
        self._directory = directory

    def lock(self, name: str) -> FileLock:
        return FileLock(self._directory(), name)

    def close(self) -> None:
        return None
