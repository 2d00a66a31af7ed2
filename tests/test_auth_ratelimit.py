"""Failed-login limits counted in a real SQLite database, with a fake clock. Two limiters on
one database stand for two workers."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select

from portway.auth.ratelimit import LoginLimiter
from portway.db.auth_schema import login_failures
from portway.db.migrations import migrate


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    migrate(engine)
    return engine


def limiter(engine: Engine, clock: Clock, **kwargs: int) -> LoginLimiter:
    return LoginLimiter(
        engine,
        kwargs.get("max_failures", 3),
        kwargs.get("window", 300),
        max_failures_per_address=kwargs.get("per_address", 5),
        clock=clock,
    )


def test_pair_locked_only_from_its_address(engine: Engine, clock: Clock) -> None:
    worker_1, worker_2 = limiter(engine, clock), limiter(engine, clock)
    assert worker_1.failure("alice", "10.0.0.1") is None
    clock.now += 10
    assert worker_2.failure("alice", "10.0.0.1") is None
    clock.now += 10
    locked = worker_1.failure("alice", "10.0.0.1")
    assert locked is not None and locked.key == "user"
    assert locked.retry_after == 300 - 20  # the first failure leaves the window then
    assert worker_2.check("alice", "10.0.0.1") == locked  # the other worker sees it
    assert worker_2.check("alice", "192.0.2.1") is None  # another address: not locked
    assert worker_2.check("bob", "10.0.0.1") is None
    clock.now += 279
    assert worker_2.check("alice", "10.0.0.1").retry_after == 1  # type: ignore[union-attr]
    clock.now += 1
    assert worker_2.check("alice", "10.0.0.1") is None  # sliding: one failure aged out
    assert worker_1.failure("alice", "10.0.0.1") is not None  # ...and one more locks again


def test_many_addresses_never_lock_a_user(engine: Engine, clock: Clock) -> None:
    workers = limiter(engine, clock), limiter(engine, clock)
    for i in range(50):
        workers[i % 2].failure("admin", f"203.0.113.{i}")
    assert workers[0].check("admin", "198.51.100.1") is None


def test_address_locked_across_user_names(engine: Engine, clock: Clock) -> None:
    worker_1, worker_2 = limiter(engine, clock), limiter(engine, clock)
    for name in ("a", "b", "c", "d"):
        assert worker_1.failure(name, "203.0.113.7") is None
    locked = worker_2.failure("e", "203.0.113.7")
    assert locked is not None and locked.key == "address"
    assert worker_1.check("admin", "203.0.113.7") is not None
    assert worker_1.check("admin", "203.0.113.8") is None
    clock.now += 300
    assert worker_2.check("admin", "203.0.113.7") is None


def test_success_clears_the_pair_but_not_the_address(engine: Engine, clock: Clock) -> None:
    limits = limiter(engine, clock, max_failures=2, per_address=3)
    limits.failure("alice", "198.51.100.1")
    limits.success("alice", "198.51.100.1")
    assert limits.failure("alice", "198.51.100.1") is None  # the pair's count restarted
    locked = limits.failure("mallory", "198.51.100.1")  # the address's count kept all three
    assert locked is not None and locked.key == "address"


def test_unlock(engine: Engine, clock: Clock) -> None:
    limits = limiter(engine, clock, max_failures=2, per_address=4)
    for address in ("192.0.2.1", "192.0.2.2"):
        limits.failure("admin", address)
        limits.failure("admin", address)
        assert limits.check("admin", address) is not None
    assert LoginLimiter(engine).unlock("admin") == 4  # e.g. `portway user unlock admin`
    assert limits.check("admin", "192.0.2.1") is None
    assert limits.check("admin", "192.0.2.2") is None
    limits.failure("x", "192.0.2.1")
    limits.failure("y", "192.0.2.1")
    assert limits.check("admin", "192.0.2.1") is not None  # the address: 4 failures
    LoginLimiter(engine).unlock("admin", "192.0.2.1")
    assert limits.check("admin", "192.0.2.1") is None


def test_old_failures_are_deleted(engine: Engine, clock: Clock) -> None:
    limits = limiter(engine, clock, window=10)
    for i in range(20):
        limits.failure(f"u{i}", f"a{i}")
    clock.now += 11
    limits.failure("u", "a")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(login_failures)).scalar() == 1


def test_bad_parameters(engine: Engine) -> None:
    with pytest.raises(ValueError):
        LoginLimiter(engine, max_failures=0)
    with pytest.raises(ValueError):
        LoginLimiter(engine, window=0)
    with pytest.raises(ValueError):
        LoginLimiter(engine, max_failures_per_address=0)
