"""Storage faults: a full file system, and blob files damaged on disk.

`StorageFull` is what a write raises when the blob store's file system is out of space (or
quota); the HTTP layer answers it with 507 Insufficient Storage, and reads go on.

`StorageFaults` counts damaged blob files met while serving, for a readiness check or a
metrics endpoint to read, and says each one once in the log (not once per request for it).
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass, field

log = logging.getLogger("portway.storage")

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_REPORTED_LIMIT = 10000


class StorageFull(Exception):
    """The blob store's file system has no space left: nothing was stored."""

    def __init__(self, what: str) -> None:
        super().__init__(f"storage is full: {what} (no space left on the blob store)")


def is_full(exc: BaseException) -> bool:
    """An OSError saying the file system (or the quota) is full."""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


@dataclass
class StorageFaults:
    """Counters of storage faults since the process started."""

    damaged_blobs: int = 0  # requests refused because the blob file is missing or short
    _reported: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def damaged(self, digest: str, path: str, recorded: int, actual: int | None) -> None:
        """A blob file that is missing (`actual` None) or not its recorded size."""
        with self._lock:
            self.damaged_blobs += 1
            first = digest not in self._reported
            if first:
                if len(self._reported) >= _REPORTED_LIMIT:
                    self._reported.clear()
                self._reported.add(digest)
        if first:
            state = "is missing" if actual is None else f"has {actual} bytes"
            log.error(
                "storage fault: blob %s %s (%s), its records say %d bytes; answering "
                "BLOB_UNKNOWN until it is pushed again",
                digest,
                state,
                path,
                recorded,
            )

    def healed(self, digest: str) -> None:
        """The blob was written again: report it once more should it be damaged again."""
        with self._lock:
            self._reported.discard(digest)
