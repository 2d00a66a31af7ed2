"""Coordination protocols on one host (flock, SQLite leases) and in a cluster (PostgreSQL
advisory locks and leases): the same tests on both. Two lock or lease objects on one database
stand for two nodes; a holder that dies is a real process killed with SIGKILL."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, ParamSpec

import pytest

from portway.coordination.flock import FileLocks
from portway.coordination.interfaces import Lease, LeaseLost, Locks
from portway.coordination.leases import DatabaseLeases
from portway.coordination.postgres import AdvisoryLocks
from portway.coordination.singleton import run_singleton
from portway.db.shared_schema import leases as leases_table
from portway.db.store import MetadataStore, open_metadata

LocksFactory = Callable[[], Locks]
P = ParamSpec("P")


def in_loop(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test function in a fresh event loop (the suite uses no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'portway.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    with open_metadata(url) as store, store.engine.begin() as conn:
        conn.execute(leases_table.delete())
    yield url


@pytest.fixture
def store(database_url: str) -> Iterator[MetadataStore]:
    meta = open_metadata(database_url)
    yield meta
    meta.close()


@pytest.fixture(params=["flock", "postgresql"])
def make_locks(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocksFactory]:
    """Each call: the locks of another process (flock) or node (PostgreSQL)."""
    made: list[Locks] = []
    stores: list[MetadataStore] = []

    def make() -> Locks:
        locks: Locks
        if request.param == "flock":
            (tmp_path / "locks").mkdir(exist_ok=True)
            locks = FileLocks(lambda: tmp_path / "locks")
        else:
            store = open_metadata(request.getfixturevalue("postgres_url"))
            stores.append(store)
            locks = AdvisoryLocks(store.read_engine)
        made.append(locks)
        return locks

    yield make
    for locks in made:
        locks.close()
    for store in stores:
        store.close()


@in_loop
async def test_a_lock_has_one_holder_among_nodes_and_within_one(
    make_locks: LocksFactory,
) -> None:
    node_a, node_b = make_locks(), make_locks()
    first = node_a.lock("blob-1")
    assert await first.try_acquire() and first.held
    assert await first.try_acquire()  # already ours
    assert not await node_b.lock("blob-1").try_acquire()  # another node
    assert not await node_a.lock("blob-1").try_acquire()  # another holder of the same node
    assert await node_b.lock("blob-2").try_acquire()  # other names are free
    waiter = node_b.lock("blob-1")
    waiting = asyncio.ensure_future(waiter.acquire())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await first.release()
    await asyncio.wait_for(waiting, 5)
    assert waiter.held and not first.held
    await waiter.release()
    assert await node_a.lock("blob-1").try_acquire()


@in_loop
async def test_advisory_locks_die_with_their_holder(postgres_url: str, tmp_path: Path) -> None:
    """A node killed while it holds a lock (SIGKILL: no release) frees it at once."""
    script = tmp_path / "holder.py"
    script.write_text(
        "import asyncio, sys\n"
        "from portway.coordination.postgres import AdvisoryLocks\n"
        "from portway.db.store import open_metadata\n"
        "async def main():\n"
        "    locks = AdvisoryLocks(open_metadata(sys.argv[1]).read_engine)\n"
        "    assert await locks.lock('layer').try_acquire()\n"
        "    print('held', flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    holder = subprocess.Popen(
        [sys.executable, str(script), postgres_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with open_metadata(postgres_url) as store:
            locks = AdvisoryLocks(store.read_engine)
            try:
                assert not await locks.lock("layer").try_acquire()
                os.kill(holder.pid, signal.SIGKILL)
                holder.wait(10)
                lock = locks.lock("layer")
                await asyncio.wait_for(lock.acquire(), 5)
                assert lock.held
            finally:
                locks.close()
    finally:
        holder.kill()
        holder.wait(10)


@in_loop
async def test_a_lease_has_one_holder_and_a_new_token_at_each_take_over(
    store: MetadataStore,
) -> None:
    node_a = DatabaseLeases(store.engine, holder="node-a")
    node_b = DatabaseLeases(store.engine, holder="node-b")
    lease = await node_a.acquire("gc", ttl=0.5)
    assert lease is not None and lease.holder == "node-a"
    assert await node_b.acquire("gc", ttl=0.5) is None
    assert node_b.current("gc") == lease
    renewed = await node_a.renew(lease, ttl=0.5)
    assert renewed is not None and renewed.token == lease.token
    await asyncio.sleep(0.6)  # node-a stopped renewing: its lease runs out
    taken = await node_b.acquire("gc", ttl=5)
    assert taken is not None and taken.token == lease.token + 1
    assert await node_a.renew(lease, ttl=5) is None  # node-a learns it lost the lease
    with store.engine.begin() as conn:
        node_b.fence(conn, taken)
        with pytest.raises(LeaseLost):
            node_a.fence(conn, lease)  # writes on the old token are refused
    await node_b.release(taken)
    again = await node_a.acquire("gc", ttl=5)  # released: no need to wait for the expiry
    assert again is not None and again.token == taken.token + 1


@in_loop
async def test_concurrent_contenders_get_one_lease(store: MetadataStore) -> None:
    nodes = [DatabaseLeases(store.engine, holder=f"node-{i}") for i in range(6)]
    got = await asyncio.gather(*(n.acquire("scheduler", ttl=30) for n in nodes))
    assert len([lease for lease in got if lease is not None]) == 1


@in_loop
async def test_a_dead_holders_job_is_taken_over_within_two_lease_lifetimes(
    database_url: str, tmp_path: Path
) -> None:
    ttl = 1.5
    script = tmp_path / "singleton.py"
    script.write_text(
        "import asyncio, sys\n"
        "from portway.coordination.leases import DatabaseLeases\n"
        "from portway.coordination.singleton import run_singleton\n"
        "from portway.db.store import open_metadata\n"
        "async def job(lease):\n"
        "    print('running', lease.token, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "leases = DatabaseLeases(open_metadata(sys.argv[1]).engine, holder='doomed')\n"
        f"asyncio.run(run_singleton(leases, 'gc', {ttl}, job))\n"
    )
    holder = subprocess.Popen(
        [sys.executable, str(script), database_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        first_token = int(holder.stdout.readline().split()[1])
        with open_metadata(database_url) as meta:
            ours = DatabaseLeases(meta.engine, holder="survivor")
            started: list[Lease] = []

            async def job(lease: Lease) -> None:
                started.append(lease)

            contender = asyncio.ensure_future(run_singleton(ours, "gc", ttl, job))
            await asyncio.sleep(ttl * 1.5)
            assert not started  # the holder renews: nobody else runs the job
            os.kill(holder.pid, signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.wait_for(contender, 2 * ttl + 1)
            took = time.monotonic() - killed
        assert started and started[0].token == first_token + 1
        assert took < 2 * ttl, f"taken over {took:.2f}s after the holder died (lease {ttl}s)"
    finally:
        holder.kill()
        holder.wait(10)
