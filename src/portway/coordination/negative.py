"""A proxy repository's negative cache: "the upstream has no such manifest", until a time.

In process, with a record of what changed since the last look, so a cluster can share it:
portway.maintenance.proxy_state writes each node's new entries (and the ones a later pull
forgot) to the database and merges the other nodes' entries in, every few seconds. Times are
wall-clock (seconds since the epoch), so they mean the same on every node.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

Key = tuple[str, str]  # (image, reference)
MAX_ENTRIES = 10000


class NegativeCache:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: dict[Key, float] = {}
        self._added: dict[Key, float] = {}
        self._forgotten: set[Key] = set()
        self._shared: set[Key] = set()  # the cluster's entries as of the last merge

    def hit(self, image: str, reference: str) -> bool:
        expires = self._entries.get((image, reference))
        if expires is None:
            return False
        if expires < self._clock():
            del self._entries[(image, reference)]
            return False
        return True

    def remember(self, image: str, reference: str, ttl: float) -> None:
        if ttl <= 0:
            return
        if len(self._entries) > MAX_ENTRIES:
            self._entries.clear()
        key = (image, reference)
        self._entries[key] = self._added[key] = self._clock() + ttl
        self._forgotten.discard(key)

    def forget(self, image: str, reference: str) -> None:
        key = (image, reference)
        if self._entries.pop(key, None) is not None or key in self._added:
            self._forgotten.add(key)
        self._added.pop(key, None)

    def take_changes(self) -> tuple[dict[Key, float], set[Key]]:
        """What this process added and forgot since the last call."""
        added, forgotten = self._added, self._forgotten
        self._added, self._forgotten = {}, set()
        return added, forgotten

    def merge(self, entries: Iterable[tuple[str, str, float]]) -> None:
        """The cluster's entries now (after this node's changes went out): new ones are taken
        (the later expiry wins), and one that was shared before and is gone now (a node found
        the manifest upstream since) is dropped here too."""
        now = self._clock()
        shared = {(image, reference): expires for image, reference, expires in entries}
        for key in self._shared - shared.keys():
            if key not in self._added:
                self._entries.pop(key, None)
        for key, expires in shared.items():
            if expires > now and expires > self._entries.get(key, 0.0):
                self._entries[key] = expires
        self._shared = set(shared)
