"""Bearer tokens already verified, so a request with a token seen before costs no signature
check, no JSON parsing and no claim checks.

An entry is keyed by the SHA-256 of the token with the route and the service it was presented
for (the cache never keeps the raw token; a kept-alive connection keeps the one it sent last,
with its key, http/protocol.py), holds the grant the full check produced, and is used only

- before the token's own expiry (`exp` plus the authority's leeway), and
- while the stamp it was stored under is still current: the security generation (any change
  to users or roles, from any worker or the CLI) and the key ring's revision (a signing key
  added or removed). A new stamp makes every entry stale at once, so a disabled user, a
  revoked role or a removed key take effect as soon as the service notices the change.

Refusals are not remembered: a forged or replayed token is checked (and audited) each time.
The cache holds at most `size` entries; the oldest go first.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
Stamp = tuple[int, int]  # (security generation, key ring revision)
DEFAULT_SIZE = 4096


def token_key(token: str, route: str | None, audience: str | None) -> bytes:
    """What an entry is filed under: a hash of the token and where it was presented."""
    text = f"{route or ''}\0{audience or ''}\0{token}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class VerifiedTokens(Generic[T]):
    def __init__(self, size: int = DEFAULT_SIZE, clock: Callable[[], float] = time.time) -> None:
        if size <= 0:
            raise ValueError("the token cache needs room for at least one token")
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, Stamp, T]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, stamp: Stamp) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] != stamp or self._clock() >= entry[0]:
            with self._lock:
                self._entries.pop(key, None)
            return None
        return entry[2]

    def put(self, key: bytes, value: T, valid_until: float, stamp: Stamp) -> None:
        """Remember `value` for `key` until `valid_until` (clock seconds) under `stamp`."""
        with self._lock:
            self._entries[key] = (valid_until, stamp, value)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
