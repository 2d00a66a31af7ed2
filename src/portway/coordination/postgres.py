"""Locks in a cluster: PostgreSQL session advisory locks, one connection per process.

`pg_try_advisory_lock(hashtextextended(name, 0))` on a connection this process keeps for its
locks: every node (and every worker) sharing the database excludes the others, and a process
that dies (SIGKILL, a lost host) loses its connection and with it its locks at once, so no
lock outlives its holder. One connection for all of a process's locks: PostgreSQL grants a
session the same advisory lock twice, so the process keeps its own table of held names and
refuses a second local holder itself.

Every statement runs in one thread of its own, never on the event loop. A waiter polls, as the
flock locks do. If the lock connection breaks, its locks are gone: the holders carry on (the
worst outcome is a second upstream download of the same content), and the next call reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from portway.coordination.flock import POLL_MAX, POLL_MIN

log = logging.getLogger("portway.coordination")

_TRY = text("SELECT pg_try_advisory_lock(hashtextextended(:n, 0))")
_UNLOCK = text("SELECT pg_advisory_unlock(hashtextextended(:n, 0))")


class AdvisoryLocks:
    """`Locks` on a PostgreSQL database (`engine`: autocommit connections, the read engine)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._held: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="portway-locks")

    def lock(self, name: str) -> AdvisoryLock:
        return AdvisoryLock(self, name)

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self._engine.connect()
            self._held.clear()  # a new session holds nothing
        return self._conn

    def _run(self, statement: object, name: str) -> bool:
        try:
            return bool(self._connection().execute(statement, {"n": name}).scalar())  # type: ignore[call-overload]
        except SQLAlchemyError as exc:
            log.warning("lock connection to the database failed (%s); reconnecting", exc)
            self._drop()
            raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except SQLAlchemyError:
                pass

    def _try(self, name: str) -> bool:
        if name in self._held:
            return False  # another holder of this process has it
        if self._run(_TRY, name):
            self._held.add(name)
            return True
        return False

    def _release(self, name: str) -> None:
        if name in self._held:
            self._held.discard(name)
            self._run(_UNLOCK, name)

    async def _call(self, fn: object, name: str) -> bool:
        loop = asyncio.get_running_loop()
        return bool(await loop.run_in_executor(self._pool, fn, name))  # type: ignore[arg-type]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._drop()


class AdvisoryLock:
    def __init__(self, locks: AdvisoryLocks, name: str) -> None:
        self.name = name
        self._locks = locks
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    async def try_acquire(self) -> bool:
        if not self._held:
            self._held = await self._locks._call(self._locks._try, self.name)
        return self._held

    async def acquire(self) -> None:
        delay = POLL_MIN
        while not await self.try_acquire():
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    async def release(self) -> None:
        if not self._held:
            return
        self._held = False
        with contextlib.suppress(SQLAlchemyError):  # gone with the connection, if it broke
            await self._locks._call(self._locks._release, self.name)
