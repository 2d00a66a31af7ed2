"""The metadata store's plumbing: engines, the writer thread, reads, the read cache.

Writes run in the store's writer thread, each in one transaction (`BEGIN IMMEDIATE` on
SQLite), so a manifest and its tags change together or not at all, and a write lock held
elsewhere delays only writes (see portway.db.engine).

Reads are coroutines. On SQLite they run inline on the event loop (indexed lookups of
microseconds on a local file, one connection per process, WAL snapshots that never wait for a
writer: a thread hop would cost more than the query). On PostgreSQL a query is a network
round trip, so reads run in a pool of `[database] pool_size` threads, each with a connection
of its own, and the event loop never waits for the database (ADR 0021). Hot lookups are
cached in process and checked against the change signal on the loop (portway.db.notify), so a
cached answer costs no thread hop and no round trip on either database.

Every read and write that reaches the database is timed here, as long as its caller waited
(the thread hop and the writer's queue included), under the name of the store method that
made it (portway.observe.store_latency); a cached answer is no database call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from portway.db.dialect import Dialect, dialect_for
from portway.db.engine import DEFAULT_BUSY_TIMEOUT, Writer
from portway.db.notify import ChangeSignal, change_signal, notify_change
from portway.observe.store_latency import database_latency, database_operation

T = TypeVar("T")

CACHE_ENTRIES = 20000
DEFAULT_READ_THREADS = 10


class StoreBase:
    def __init__(
        self,
        read_engine: Engine,
        write_engine: Engine,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        read_threads: int = DEFAULT_READ_THREADS,
    ) -> None:
        self._read_engine = read_engine
        self._write_engine = write_engine
        self.dialect: Dialect = dialect_for(write_engine)
        self._writer = Writer(write_engine, busy_timeout)
        self._reader: Connection | None = None
        self._inline = self.dialect.name == "sqlite"
        self._read_pool: ThreadPoolExecutor | None = None
        self._read_threads = read_threads
        self._local = threading.local()
        self._thread_conns: list[Connection] = []
        self._conns_lock = threading.Lock()
        # Hot lookups (manifest by tag or digest, blob link size) cached in process. Each entry
        # carries the change token seen before its query; it is used only while the token is
        # unchanged, so a cached answer is never staler than the signal (data_version on one
        # host, LISTEN/NOTIFY in a cluster). A token of None caches nothing.
        self._signal = change_signal(write_engine, self._conn)
        self._cache: dict[tuple[object, ...], tuple[object, Any]] = {}
        self._data_version: object = None

    @property
    def engine(self) -> Engine:
        """The write engine: every transaction on it takes the write lock (BEGIN IMMEDIATE)."""
        return self._write_engine

    @property
    def change_signal(self) -> ChangeSignal:
        """What tells this process the database changed (see portway.db.notify)."""
        return self._signal

    @property
    def read_engine(self) -> Engine:
        """The read engine: statements that never take or wait for the write lock."""
        return self._read_engine

    def close(self) -> None:
        self._writer.close()
        self._signal.close()
        if self._read_pool is not None:
            self._read_pool.shutdown(wait=True)
        for conn in self._thread_conns:
            conn.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._read_engine.dispose()
        self._write_engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _conn(self) -> Connection:
        """The read connection of the event loop's thread (SQLite; also the CLI's reads)."""
        if self._reader is None:
            self._reader = self._read_engine.connect()
        return self._reader

    def read_now(self, fn: Callable[[Connection], T]) -> T:
        """Run a read in the calling thread (CLI commands, start-up): not on a serving loop."""
        key = (database_operation(fn), "read")
        start = time.perf_counter()
        try:
            result = fn(self._conn())
        except BaseException as exc:
            _failed(key, start, exc)
            raise
        database_latency.observe(key, time.perf_counter() - start)
        return result

    async def _read(self, fn: Callable[[Connection], T], operation: str | None = None) -> T:
        """`operation`: the store method's name, where `fn` belongs to a shared helper."""
        key = (operation or database_operation(fn), "read")
        start = time.perf_counter()
        try:
            if self._inline:
                result = fn(self._conn())
            else:
                if self._read_pool is None:
                    self._read_pool = ThreadPoolExecutor(
                        max_workers=self._read_threads, thread_name_prefix="portway-db-read"
                    )
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._read_pool, self._in_thread, fn)
        except BaseException as exc:
            _failed(key, start, exc)
            raise
        database_latency.observe(key, time.perf_counter() - start)
        return result

    def _in_thread(self, fn: Callable[[Connection], T]) -> T:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.invalidated or conn.closed:
            conn = self._read_engine.connect()
            self._local.conn = conn
            with self._conns_lock:
                self._thread_conns.append(conn)
        return fn(conn)

    async def _one(self, stmt: Any, operation: str, params: dict[str, Any] | None = None) -> Any:
        return await self._read(lambda conn: conn.execute(stmt, params).first(), operation)

    async def _cached(
        self, key: tuple[object, ...], load: Callable[[Connection], T], fresh: bool = False
    ) -> T:
        """`load`'s answer, from the read cache while no write was signalled since; `fresh`
        reads the database itself (a writer on another node may not have been signalled yet:
        what a lock's new holder re-checks must be read so)."""
        if fresh:
            return await self._read(load)
        version = self._signal.token()
        if version != self._data_version:
            self._cache.clear()
            self._data_version = version
        if version is not None:
            entry = self._cache.get(key)
            if entry is not None and entry[0] == version:
                return entry[1]  # type: ignore[no-any-return]
        value = await self._read(load)
        if version is not None:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = (version, value)
        return value

    async def _write(self, fn: Callable[[Connection], T]) -> T:
        def run(conn: Connection) -> T:
            result = fn(conn)
            notify_change(conn)
            return result

        key = (database_operation(fn), "write")
        start = time.perf_counter()
        try:
            result = await self._writer.run(run)
        except BaseException as exc:
            _failed(key, start, exc)
            raise
        finally:
            self._signal.written()
        database_latency.observe(key, time.perf_counter() - start)
        return result


def _failed(key: tuple[str, str], start: float, exc: BaseException) -> None:
    """A call that raised: timed too, and an error when the database failed (a refusal the
    store's caller raised inside a transaction, such as a tag guard's, is no error)."""
    database_latency.observe(key, time.perf_counter() - start, isinstance(exc, SQLAlchemyError))
