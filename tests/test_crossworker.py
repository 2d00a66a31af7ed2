"""Locks and spool notices that worker processes coordinate proxy fetches through (the
end-to-end single-flight tests with 2 workers are in test_proxy.py)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path

from portway.upstream.crossworker import SpoolNotice, WorkerLock


def _hold(directory: str, name: str, locked: MpEvent, done: MpEvent) -> None:
    lock = WorkerLock(Path(directory), name)
    assert lock.try_acquire()
    locked.set()
    done.wait(30)
    lock.release()


def test_one_holder_among_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    locked, done = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(str(tmp_path), "k", locked, done))
    other.start()
    try:
        assert locked.wait(30)
        mine = WorkerLock(tmp_path, "k")
        assert not mine.try_acquire()  # the other process holds it
        assert WorkerLock(tmp_path, "other-key").try_acquire()
        done.set()
        other.join(30)
        assert mine.try_acquire()  # released when the holder let go
        mine.release()
    finally:
        done.set()
        other.join(30)


def test_release_removes_the_file_and_a_stale_descriptor_does_not_win(tmp_path: Path) -> None:
    first = WorkerLock(tmp_path, "k")
    assert first.try_acquire()
    # A waiter opened the file before the holder removed it: it must not lock that inode.
    stale_fd = os.open(first.path, os.O_RDWR)
    first.release()
    assert not first.path.exists()
    second = WorkerLock(tmp_path, "k")
    assert second.try_acquire()
    third = WorkerLock(tmp_path, "k")
    assert not third.try_acquire()
    os.close(stale_fd)
    second.release()


def test_acquire_waits_for_the_holder(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        order: list[str] = []
        holder = WorkerLock(tmp_path, "k")
        assert holder.try_acquire()

        async def waiter() -> None:
            lock = WorkerLock(tmp_path, "k")
            await lock.acquire()
            order.append("waiter got it")
            lock.release()

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.05)
        order.append("holder releases")
        holder.release()
        await asyncio.wait_for(task, 5)
        return order

    assert asyncio.run(scenario()) == ["holder releases", "waiter got it"]


def test_spool_notice_round_trip(tmp_path: Path) -> None:
    notice = SpoolNotice(tmp_path, "k")
    assert notice.read() is None
    notice.publish(tmp_path / "spool-1", 1234)
    assert notice.read() == (tmp_path / "spool-1", 1234)
    notice.publish(tmp_path / "spool-1", None)  # the upstream sent no length
    assert notice.read() == (tmp_path / "spool-1", None)
    notice.withdraw()
    assert notice.read() is None
    notice.withdraw()  # twice is harmless
