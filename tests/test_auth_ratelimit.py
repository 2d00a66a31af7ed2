"""Failed-login limiter with a fake clock."""

from __future__ import annotations

import pytest

from portway.auth.ratelimit import LoginLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_user_locked_after_max_failures_then_recovers(clock: Clock) -> None:
    limiter = LoginLimiter(max_failures=3, window=300, clock=clock)
    for i in range(2):
        assert limiter.failure("alice", f"10.0.0.{i}") is None
        clock.now += 10
    locked = limiter.failure("alice", "10.0.0.9")
    assert locked is not None and locked.key == "user"
    assert locked.retry_after == 300 - 20  # the first failure leaves the window then
    assert limiter.check("alice", "192.0.2.1") is not None  # any address
    assert limiter.check("bob", "192.0.2.1") is None
    clock.now += 279
    assert limiter.check("alice", None) is not None
    assert limiter.check("alice", None).retry_after == 1  # type: ignore[union-attr]
    clock.now += 1
    assert limiter.check("alice", None) is None  # sliding: one failure aged out
    assert limiter.failure("alice", None) is not None  # ...and one more locks again


def test_address_locked_across_user_names(clock: Clock) -> None:
    limiter = LoginLimiter(max_failures=3, window=60, clock=clock)
    for name in ("a", "b", "c"):
        limiter.failure(name, "203.0.113.7")
    locked = limiter.check("d", "203.0.113.7")
    assert locked is not None and locked.key == "addr"
    assert limiter.check("d", "203.0.113.8") is None
    clock.now += 60
    assert limiter.check("d", "203.0.113.7") is None


def test_success_clears_user_but_not_address(clock: Clock) -> None:
    limiter = LoginLimiter(max_failures=2, window=60, clock=clock)
    limiter.failure("alice", "198.51.100.1")
    limiter.success("alice")
    assert limiter.failure("alice", "198.51.100.2") is None  # user count restarted
    assert limiter.failure("mallory", "198.51.100.1") is not None  # address count kept


def test_memory_is_bounded(clock: Clock) -> None:
    limiter = LoginLimiter(max_failures=5, window=300, max_keys=100, clock=clock)
    for i in range(10_000):
        limiter.failure(f"user{i}", f"addr{i}")
    assert len(limiter) <= 100
    for _ in range(50):
        limiter.failure("same", "same")
    assert len(limiter) <= 100
    assert limiter.check("same", None) is not None


def test_expired_keys_are_forgotten(clock: Clock) -> None:
    limiter = LoginLimiter(max_failures=5, window=10, clock=clock)
    limiter.failure("u", "a")
    clock.now += 11
    assert limiter.check("u", "a") is None
    assert len(limiter) == 0


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        LoginLimiter(max_failures=0)
    with pytest.raises(ValueError):
        LoginLimiter(window=0)
