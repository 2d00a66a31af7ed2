"""Failed-login limiter: per user name and per client address, sliding window, bounded memory.

After `max_failures` failures within `window` seconds a key is locked until the oldest of those
failures leaves the window; `retry_after` says how long that is (the `Retry-After` value of a
429). A success clears the user's failures but not the address's, so one valid account cannot
be used to reset the counter of an address guessing at others.

Memory is bounded: at most `max_keys` keys are tracked, each holding at most `max_failures`
timestamps; when full, the key whose latest failure is oldest is dropped. State is per
process: with N workers an attacker gets at most N times the allowance.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Lockout:
    """A refused attempt: which key is locked and for how many whole seconds."""

    key: str
    retry_after: int


class LoginLimiter:
    def __init__(
        self,
        max_failures: int = 10,
        window: float = 300.0,
        *,
        max_keys: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1 or window <= 0 or max_keys < 2:
            raise ValueError("max_failures >= 1, window > 0 and max_keys >= 2 required")
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _keys(user: str | None, client_addr: str | None) -> list[str]:
        keys = []
        if user is not None:
            keys.append("user:" + user[:256])
        if client_addr:
            keys.append("addr:" + client_addr[:64])
        return keys

    def check(self, user: str | None, client_addr: str | None) -> Lockout | None:
        """Before checking a password: a `Lockout` when either key is locked, else None."""
        now = self._clock()
        worst: Lockout | None = None
        with self._lock:
            for key in self._keys(user, client_addr):
                wait = self._retry_after(key, now)
                if wait and (worst is None or wait > worst.retry_after):
                    worst = Lockout(key.partition(":")[0], wait)
        return worst

    def failure(self, user: str | None, client_addr: str | None) -> Lockout | None:
        """Record a failed login; returns the lockout it causes, if any."""
        now = self._clock()
        with self._lock:
            for key in self._keys(user, client_addr):
                stamps = self._failures.pop(key, None)
                if stamps is None:
                    self._make_room()
                    stamps = deque(maxlen=self.max_failures)
                stamps.append(now)
                self._failures[key] = stamps
        return self.check(user, client_addr)

    def success(self, user: str) -> None:
        with self._lock:
            self._failures.pop("user:" + user[:256], None)

    def _retry_after(self, key: str, now: float) -> int:
        stamps = self._failures.get(key)
        if stamps is None:
            return 0
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps:
            del self._failures[key]
            return 0
        if len(stamps) < self.max_failures:
            return 0
        return max(1, math.ceil(stamps[0] + self.window - now))

    def _make_room(self) -> None:
        # Keys are ordered by their latest failure, so the first is the stalest (and the
        # first to have expired): dropping it is O(1) even under a flood of new addresses.
        while len(self._failures) >= self.max_keys:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)
