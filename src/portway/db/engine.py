"""Engines for the metadata database (SQLite, PostgreSQL), and what their failures mean.

Two engines on one file (docs/adr/0008-under-faults.md):

- reads: autocommit statements on a database in WAL mode. A WAL reader never waits for a
  writer, so reads may run on the event loop even while another process holds the write lock;
  their busy timeout is short, for the rare moments a reader does wait (WAL recovery).
- writes: every transaction starts with `BEGIN IMMEDIATE` and waits at most the busy timeout
  (`[server] database_busy_timeout`) for the write lock, always in a thread (`Writer`).

PostgreSQL (`postgres_engines`): reads on autocommit connections, writes in READ COMMITTED
transactions whose lock waits are bounded by `lock_timeout` (the same busy timeout); what
differs between the two is in portway.db.dialect.

Failures come out typed: `DatabaseBusy` (the lock was not free in time: retry) and
`DatabaseFull` (the disk under the database is full), whatever code ran the statement.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import SQLAlchemyError

from portway.db.dialect import dialect_for

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 5.0  # seconds a write waits for the lock before DatabaseBusy
READ_BUSY_TIMEOUT = 0.5  # seconds; a WAL reader only waits while a connection recovers the WAL
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13


class DatabaseBusy(SQLAlchemyError):
    """Another connection (a worker, a `portway` command, a backup) held the write lock for
    longer than the busy timeout. Nothing was written; the same request may be retried.
    (An SQLAlchemyError, so code that already handles database errors handles it too.)"""

    def __init__(self, waited: float) -> None:
        super().__init__(f"database is busy: the write lock was not free within {waited:.1f}s")
        self.retry_after = max(1, math.ceil(waited))


class DatabaseFull(SQLAlchemyError):
    """The file system holding the metadata database is full: nothing was written."""

    def __init__(self) -> None:
        super().__init__("storage is full: the metadata database cannot grow")


_PG_LOCK_NOT_AVAILABLE, _PG_DISK_FULL = "55P03", "53100"


def _translate_pg(context: ExceptionContext) -> None:
    """handle_error hook: PostgreSQL's lock timeout and full disk as DatabaseBusy/Full."""
    code = getattr(context.original_exception, "sqlstate", None)
    if code == _PG_LOCK_NOT_AVAILABLE:
        raise DatabaseBusy(0.0) from context.original_exception
    if code == _PG_DISK_FULL:
        raise DatabaseFull() from context.original_exception


def _translate(context: ExceptionContext) -> None:
    """handle_error hook: SQLite's busy and full errors leave as DatabaseBusy/DatabaseFull."""
    orig = context.original_exception
    if not isinstance(orig, sqlite3.OperationalError | sqlite3.DatabaseError):
        return
    code = getattr(orig, "sqlite_errorcode", 0) & 0xFF
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        conn = context.connection
        dbapi = conn.connection.dbapi_connection if conn is not None else None
        waited = _busy_timeout(dbapi) if dbapi is not None else 0.0
        raise DatabaseBusy(waited) from orig
    if code == _SQLITE_FULL:
        raise DatabaseFull() from orig


def _busy_timeout(dbapi: Any) -> float:
    try:
        return float(dbapi.execute("PRAGMA busy_timeout").fetchone()[0]) / 1000
    except sqlite3.Error:
        return 0.0


def set_busy_timeout(conn: Connection, seconds: float) -> None:
    """How long this connection's next statements wait for a lock (before any BEGIN)."""
    dialect_for(conn).set_lock_timeout(conn, seconds)


def postgres_url(url: str) -> str:
    """`postgresql://...` as SQLAlchemy's psycopg 3 URL (`postgresql+psycopg://...`)."""
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url if sep else f"postgresql+psycopg://{url}"


def postgres_engines(
    url: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT, pool_size: int = 10
) -> tuple[Engine, Engine]:
    """A read engine (autocommit statements) and a write engine (READ COMMITTED transactions,
    lock waits bounded by the busy timeout) on one PostgreSQL database. `pool_size`: the read
    engine's connections (one per read thread, plus the lock connection)."""
    target = postgres_url(url)
    read = create_engine(
        target, isolation_level="AUTOCOMMIT", pool_pre_ping=True, pool_size=pool_size + 1
    )
    write = create_engine(target, pool_pre_ping=True)
    for engine in (read, write):
        event.listen(engine, "handle_error", _translate_pg)

    @event.listens_for(write, "checkout")
    def _default_timeout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET lock_timeout = {max(1, int(busy_timeout * 1000))}")
        dbapi_conn.commit()

    return read, write


def engines_for(
    url: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT, pool_size: int = 10
) -> tuple[Engine, Engine]:
    """Read and write engines for `sqlite:///PATH` or `postgresql://...`."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite_engines(path, busy_timeout)
    if url.startswith(("postgresql:", "postgres:", "postgresql+psycopg:")):
        return postgres_engines(url, busy_timeout, pool_size)
    raise ValueError(f"database url {url!r}: use sqlite:///PATH or postgresql://...")


def sqlite_engines(path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> tuple[Engine, Engine]:
    """A read engine (autocommit statements) and a write engine (BEGIN IMMEDIATE)."""
    url = f"sqlite:///{path}"

    def make(writer: bool) -> Engine:
        timeout = busy_timeout if writer else READ_BUSY_TIMEOUT
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": timeout, "isolation_level": None},
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        event.listen(engine, "handle_error", _translate)

        if writer:

            @event.listens_for(engine, "checkout")
            def _default_timeout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
                # Writer.run shortens it for one transaction; every checkout starts afresh.
                dbapi_conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")

            @event.listens_for(engine, "begin")
            def _begin(conn: Connection) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    return make(False), make(True)


class Writer:
    """Runs write transactions off the event loop, one at a time per process.

    One thread: writes of one process queue here in order instead of polling SQLite's lock
    against each other, and a write waiting for a lock held elsewhere never holds up the
    threads that read and write blob files. A transaction waits for the lock at most what is
    left of the busy timeout since it was queued, so a queue of writes behind a held lock all
    fail within the timeout instead of one after another.
    """

    def __init__(self, engine: Engine, busy_timeout: float) -> None:
        self.engine = engine
        self.busy_timeout = busy_timeout
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="portway-db-write")

    async def run(self, fn: Callable[[Connection], T]) -> T:
        queued = time.monotonic()

        def transaction() -> T:
            left = self.busy_timeout - (time.monotonic() - queued)
            if left <= 0:
                raise DatabaseBusy(self.busy_timeout)
            try:
                with self.engine.connect() as conn:
                    set_busy_timeout(conn, left)
                    with conn.begin():
                        return fn(conn)
            except DatabaseBusy:
                raise DatabaseBusy(self.busy_timeout) from None

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, transaction)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
