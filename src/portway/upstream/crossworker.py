"""Single flight across worker processes.

`SingleFlight` and `SharedDownloads` share one upstream request among the requests of one
process. Workers share nothing but the data folder, so a second layer coordinates them there:
one `flock`'d file per key. The worker holding a key's lock fetches; the others wait (a
manifest: then read what it stored) or mirror the holder's spool file as it grows (a blob:
their clients are served while the bytes arrive, as the holder's are).

Locks are polled, never waited for in a thread: a thread blocked in `flock` per waiting
request could exhaust the executor the holder needs for hashing and writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
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


class SpoolNotice:
    """What a blob's lock holder tells the other workers: where its spool file is and how long
    the blob will be. Written atomically next to the lock, removed before the lock is."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / f"{name}.spool"

    def publish(self, spool: Path, size: int | None) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"spool": str(spool), "size": size}))
        os.replace(tmp, self.path)

    def read(self) -> tuple[Path, int | None] | None:
        try:
            doc = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        size = doc.get("size")
        return Path(doc["spool"]), size if isinstance(size, int) else None

    def withdraw(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
