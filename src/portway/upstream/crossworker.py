"""Single flight across worker processes.

`SingleFlight` and `SharedDownloads` share one upstream request among the requests of one
process. Workers share nothing but the data folder, so a second layer coordinates them there:
one `flock`'d file per key (portway.coordination.flock; a cluster uses the `Locks` of
portway.coordination instead). The worker holding a key's lock fetches; the others wait (a
manifest: then read what it stored) or mirror the holder's spool file as it grows (a blob:
their clients are served while the bytes arrive, as the holder's are).

Locks are polled, never waited for in a thread: a thread blocked in `flock` per waiting
request could exhaust the executor the holder needs for hashing and writing.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from portway.coordination.flock import POLL_MAX, POLL_MIN, WorkerLock

__all__ = ["POLL_MAX", "POLL_MIN", "SpoolNotice", "WorkerLock"]


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
