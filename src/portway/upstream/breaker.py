"""Auto-block: stop asking an upstream that keeps failing, for a while.

After ``failure_threshold`` consecutive failures (unreachable, timeout, 5xx, 429) the breaker
opens for ``block_seconds``: requests fail at once with ``UpstreamBlockedError`` and the proxy
repository serves what it has cached. When the time is up the next request is let through;
one more failure blocks again straight away, one success closes the breaker. A 429 with
``Retry-After`` blocks at least that long (capped at ``max_retry_after``), since the upstream
asked for exactly that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import UpstreamBlockedError, UpstreamError, UpstreamRateLimitedError


@dataclass(frozen=True)
class BreakerState:
    """What ``portway repo show`` prints for a proxy repository's upstream."""

    blocked: bool
    blocked_until: datetime | None  # UTC; None when not blocked
    consecutive_failures: int
    last_error: str | None  # message of the most recent failure, kept after recovery
    last_error_at: datetime | None


class UpstreamBreaker:
    def __init__(
        self,
        url: str,
        *,
        failure_threshold: int = 5,
        block_seconds: float = 60.0,
        max_retry_after: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.url = url
        self.failure_threshold = failure_threshold
        self.block_seconds = block_seconds
        self.max_retry_after = max_retry_after
        self._clock = clock
        self._failures = 0
        self._blocked_until: float | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None

    def is_blocked(self) -> bool:
        return self._blocked_until is not None and self._clock() < self._blocked_until

    def check(self) -> None:
        """Raise ``UpstreamBlockedError`` while blocked; return otherwise."""
        if self._blocked_until is None:
            return
        now = self._clock()
        if now < self._blocked_until:
            until = _utc(self._blocked_until).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise UpstreamBlockedError(
                self.url,
                f"not contacted until {until} after {self._failures} consecutive failures"
                f" (last: {self._last_error})",
                blocked_until=self._blocked_until,
            )

    def record_success(self) -> None:
        self._failures = 0
        self._blocked_until = None

    def record_failure(self, error: UpstreamError) -> None:
        """Count ``error`` if it is a health failure; other kinds (404, 401) are answers."""
        if not error.is_failure:
            self.record_success()
            return
        now = self._clock()
        self._failures += 1
        self._last_error = str(error)
        self._last_error_at = now
        until: float | None = None
        if self._failures >= self.failure_threshold:
            until = now + self.block_seconds
        if isinstance(error, UpstreamRateLimitedError) and error.retry_after:
            asked = now + min(error.retry_after, self.max_retry_after)
            until = asked if until is None else max(until, asked)
        if until is not None:
            self._blocked_until = until

    def record(self, error: UpstreamError | None) -> None:
        if error is None:
            self.record_success()
        else:
            self.record_failure(error)

    def numbers(self) -> tuple[float | None, int, str | None, float | None]:
        """(blocked until, consecutive failures, last error, its time), to share in a cluster."""
        blocked = self._blocked_until if self.is_blocked() else None
        return blocked, self._failures, self._last_error, self._last_error_at

    def adopt(
        self,
        blocked_until: float | None,
        failures: int,
        last_error: str | None,
        last_error_at: float | None,
    ) -> None:
        """Take the state another node of a cluster published (proxy_state.py), when it blocks
        for longer than this breaker does: every node stops asking a failing upstream."""
        if blocked_until is None or blocked_until <= (self._blocked_until or 0.0):
            return
        self._blocked_until = blocked_until
        self._failures = max(self._failures, failures)
        self._last_error = last_error
        self._last_error_at = last_error_at

    def state(self) -> BreakerState:
        blocked = self.is_blocked()
        return BreakerState(
            blocked=blocked,
            blocked_until=_utc(self._blocked_until) if blocked and self._blocked_until else None,
            consecutive_failures=self._failures,
            last_error=self._last_error,
            last_error_at=_utc(self._last_error_at) if self._last_error_at is not None else None,
        )


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
