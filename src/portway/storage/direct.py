"""Upload bytes written around the page cache (O_DIRECT), on the filesystem backend.

Copying a pushed body into the page cache cost this machine's pool thread 1-2 CPU s per GB,
more than hashing it (ADR 33); a direct write costs a copy into an aligned buffer and a wait
for the disk. Direct writes need offsets, lengths and memory aligned to the device's blocks,
so an append is cut in three: the bytes up to the next 4 KiB boundary of the file and the
tail after the last whole block go through the ordinary (page-cached) descriptor, the whole
blocks between them through a second descriptor opened with O_DIRECT. Both descriptors write
one file, in order, at its end; the fsync that publishes the blob covers both.

Where the filesystem refuses O_DIRECT (tmpfs, some network filesystems) the appender is not
made, and where a direct write is refused later (EINVAL) it stops trying: either way the
bytes go through the page cache as before.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
from pathlib import Path

log = logging.getLogger("portway.storage")

ALIGN = 4096  # the largest logical block size in common use
STAGE = 1024 * 1024  # the aligned buffer a direct write is copied into
MIN_DIRECT = 64 * 1024  # appends smaller than this stay in the page cache
IOV_MAX = 1024


class DirectAppender:
    """A second, O_DIRECT descriptor on a file that `append` extends, with its buffer."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._stage = mmap.mmap(-1, STAGE)  # page-aligned, as O_DIRECT wants
        self._view = memoryview(self._stage)
        self.active = True

    @classmethod
    def open(cls, path: Path) -> DirectAppender | None:
        """None where the filesystem takes no direct writes."""
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | flag)
        except OSError:
            return None
        return cls(fd)

    def close(self) -> None:
        os.close(self._fd)
        # A failed write's traceback may still hold a slice of the buffer: then the buffer
        # goes when the last slice does, not now.
        with contextlib.suppress(BufferError):
            self._view.release()
            self._stage.close()

    def append(self, fd: int, size: int, views: list[memoryview]) -> int:
        """Write `views` at the end of the file (`size` bytes long; `fd` is its ordinary
        descriptor, opened O_APPEND) and return the new size."""
        total = sum(len(v) for v in views)
        head = min((-size) % ALIGN, total)
        blocks = (total - head) // ALIGN * ALIGN
        if blocks < MIN_DIRECT:
            return size + write_all(fd, views)
        taken = _Taker(views)
        size += write_all(fd, taken.take(head))
        while blocks:
            n = min(blocks, STAGE)
            taken.copy_into(self._view, n)
            done = self._direct(size, n)
            if done < n:  # refused or cut short: the rest of the buffer the ordinary way
                done += write_all(fd, [self._view[done:n]])
            size += done
            blocks -= n
        return size + write_all(fd, taken.rest())

    def _direct(self, offset: int, n: int) -> int:
        if not self.active:
            return 0
        try:
            return os.pwrite(self._fd, self._view[:n], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            log.info("direct writes refused here (%s); uploads go through the page cache", exc)
            self.active = False
            return 0


class _Taker:
    """Hands out a list of views' bytes in order, in pieces of any size, without joining."""

    def __init__(self, views: list[memoryview]) -> None:
        self._views = [v for v in views if len(v)]
        self._i = 0
        self._at = 0

    def take(self, n: int) -> list[memoryview]:
        out: list[memoryview] = []
        while n:
            view = self._views[self._i]
            piece = view[self._at : self._at + n]
            out.append(piece)
            n -= len(piece)
            self._at += len(piece)
            if self._at == len(view):
                self._i, self._at = self._i + 1, 0
        return out

    def copy_into(self, dest: memoryview, n: int) -> None:
        at = 0
        for piece in self.take(n):
            dest[at : at + len(piece)] = piece
            at += len(piece)

    def rest(self) -> list[memoryview]:
        if self._i >= len(self._views):
            return []
        return [self._views[self._i][self._at :], *self._views[self._i + 1 :]]


def write_all(fd: int, views: list[memoryview]) -> int:
    """writev until every byte is written; returns how many that was."""
    pending = [v for v in views if len(v)]
    written = 0
    while pending:
        done = os.writev(fd, pending[:IOV_MAX])
        written += done
        while done and pending:
            head = pending[0]
            if done >= len(head):
                done -= len(head)
                pending.pop(0)
            else:
                pending[0] = head[done:]
                done = 0
    return written
