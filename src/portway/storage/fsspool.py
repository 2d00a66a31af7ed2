"""Local folders for a proxy's cache fill: spool files that readers follow as they grow, the
lock files worker processes coordinate through, and the purge of what a killed worker left.

On the filesystem backend they sit inside the storage folder (so a verified spool file is
published into the blob tree by a hard link); on S3 in bounded local temporary space, and a
verified spool file is uploaded into the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
import uuid as uuidlib
from pathlib import Path


class LocalSpool:
    def __init__(self, spool: Path, locks: Path) -> None:
        self._spool = spool
        self._locks = locks

    def lock_dir(self) -> Path:
        """A folder for the lock files worker processes coordinate through."""
        self._locks.mkdir(parents=True, exist_ok=True)
        return self._locks

    def spool_dir(self) -> Path:
        """A folder for files `BlobStore.publish_file` will adopt."""
        self._spool.mkdir(parents=True, exist_ok=True)
        return self._spool

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


def link_verified(path: Path, target: Path) -> None:
    """Give a verified, fully written file its blob name atomically: fsync it, hard-link it
    (not a rename: readers still opening it by its old path keep finding it), fsync the
    folder. A damaged file at the name (cut short) is replaced."""
    _fsync_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(path, target)
    except FileExistsError:
        if target.stat().st_size == path.stat().st_size:
            return  # the same content is there already
        spare = target.with_name(f".{target.name}.{uuidlib.uuid4().hex}")
        os.link(path, spare)
        os.replace(spare, target)
    _fsync_path(target.parent)  # the new name survives a crash


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


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
