"""Blob HEADs through a proxy: one upstream HEAD per blob at a time, for every worker.

A HEAD of a blob the cache does not hold asks the upstream with a HEAD, never a download.
Concurrent HEADs of one blob in a process share one request (`SingleFlight`); across worker
processes the one holding the blob's lock asks and leaves the length it learned in a small
file next to the lock, which the others (waiting for the lock, or arriving within
`ANSWER_TTL`) read instead of asking again. Only lengths are shared: a failure reaches the
requests of its own process, and the next process to take the lock asks afresh.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from portway.coordination.flock import FileLocks
from portway.coordination.interfaces import Locks

from .singleflight import SingleFlight

ANSWER_TTL = 30.0  # seconds an upstream's "this blob exists, N bytes" is reused


class SharedHeads:
    """Upstream blob lengths, asked once per key among all workers sharing `lock_dir`."""

    def __init__(
        self, lock_dir: Path, ttl: float = ANSWER_TTL, locks: Locks | None = None
    ) -> None:
        self.lock_dir = lock_dir
        self.locks = locks if locks is not None else FileLocks(lambda: lock_dir)
        self.ttl = ttl
        self._flights: SingleFlight[str, int | None] = SingleFlight()

    async def size(self, name: str, ask: Callable[[], Awaitable[int | None]]) -> int | None:
        """The length `ask()` gives (None: the upstream sent none), asked once for `name`
        (a lock name) by all concurrent callers of all workers."""
        known = self._read(name)
        if known is not None:
            return known
        return await self._flights.do(name, lambda: self._ask_once(name, ask))

    async def _ask_once(self, name: str, ask: Callable[[], Awaitable[int | None]]) -> int | None:
        lock = self.locks.lock(name)
        await lock.acquire()
        try:
            known = self._read(name)  # the worker that held the lock before us asked
            if known is not None:
                return known
            size = await ask()
            if size is not None:
                self._write(name, size)
            return size
        finally:
            await lock.release()

    def _path(self, name: str) -> Path:
        return self.lock_dir / f"{name}.head"

    def _read(self, name: str) -> int | None:
        path = self._path(name)
        try:
            if time.time() - path.stat().st_mtime > self.ttl:
                return None
            size = json.loads(path.read_text()).get("size")
        except (FileNotFoundError, ValueError, AttributeError):
            return None
        return size if isinstance(size, int) and size >= 0 else None

    def _write(self, name: str, size: int) -> None:
        path = self._path(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"size": size}))
        os.replace(tmp, path)
