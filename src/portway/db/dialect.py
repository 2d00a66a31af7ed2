"""What differs between SQLite and PostgreSQL, in one place (ADR 0019).

Everything else in `portway.db` and `portway.auth` is dialect-neutral SQLAlchemy Core. A
`Dialect` answers four questions:

- `change_token(conn)`: a value that moves whenever the database changed, so in-process read
  caches can tell they are stale. SQLite: `PRAGMA data_version` (moves on any commit by another
  connection, this process's writer included). PostgreSQL: None for now, meaning "do not
  cache" (the plan, LISTEN/NOTIFY, is in ADR 0019).
- `insert(table)`: an INSERT that takes `on_conflict_do_nothing` / `on_conflict_do_update`,
  so "insert unless it is there" is one statement that concurrent writers cannot race.
- `lock_keys(conn, keys)`: serialise transactions that decide on a row that may not exist yet
  (a tag move and its guard). SQLite: nothing to do, every write transaction holds the one write
  lock (`BEGIN IMMEDIATE`). PostgreSQL: transaction-scoped advisory locks.
- `set_lock_timeout(conn, seconds)` and `snapshot(conn)`: how long a write waits for a lock, and
  a read-only transaction in which several statements see one state of the database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.dialects import sqlite

if TYPE_CHECKING:  # the PostgreSQL dialect is imported by the nodes that use it
    from sqlalchemy.dialects import postgresql


class Dialect(Protocol):
    name: str

    def change_token(self, conn: Connection) -> object | None: ...

    def insert(self, table: Table) -> Any: ...

    def lock_keys(self, conn: Connection, keys: Sequence[str]) -> None: ...

    def set_lock_timeout(self, conn: Connection, seconds: float) -> None: ...

    def snapshot(self, conn: Connection) -> contextlib.AbstractContextManager[None]: ...


_LOCK_KEYS = text(
    "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) FROM "
    "(SELECT unnest(CAST(:keys AS text[])) AS k ORDER BY 1) AS sorted_keys"
)


class SQLiteDialect:
    name = "sqlite"

    def change_token(self, conn: Connection) -> object | None:
        dbapi = conn.connection.dbapi_connection
        return dbapi.execute("PRAGMA data_version").fetchone()[0] if dbapi else None

    def insert(self, table: Table) -> sqlite.Insert:
        return sqlite.insert(table)

    def lock_keys(self, conn: Connection, keys: Sequence[str]) -> None:
        return None  # BEGIN IMMEDIATE: the transaction already holds the only write lock

    def set_lock_timeout(self, conn: Connection, seconds: float) -> None:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        dbapi.execute(f"PRAGMA busy_timeout = {max(1, int(seconds * 1000))}")

    @contextlib.contextmanager
    def snapshot(self, conn: Connection) -> Iterator[None]:
        # Deferred BEGIN: a WAL read snapshot that never takes or waits for the write lock;
        # the connection's return to the pool rolls it back.
        conn.exec_driver_sql("BEGIN")
        yield


class PostgresDialect:
    name = "postgresql"

    def change_token(self, conn: Connection) -> object | None:
        return None  # no cross-node change signal yet: every lookup reads the database

    def insert(self, table: Table) -> postgresql.Insert:
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)

    def lock_keys(self, conn: Connection, keys: Sequence[str]) -> None:
        # One statement, the keys taken in sorted order (the aggregate consumes the sorted
        # subquery row by row), so two transactions locking overlapping sets cannot deadlock.
        if keys:
            conn.execute(_LOCK_KEYS, {"keys": sorted(set(keys))})

    def set_lock_timeout(self, conn: Connection, seconds: float) -> None:
        # On the driver's connection, as SQLite's does: no SQLAlchemy transaction begins here.
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        cur = dbapi.cursor()
        try:
            cur.execute(f"SET lock_timeout = {max(1, int(seconds * 1000))}")
        finally:
            cur.close()

    @contextlib.contextmanager
    def snapshot(self, conn: Connection) -> Iterator[None]:
        conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield
        finally:
            conn.exec_driver_sql("COMMIT")


SQLITE = SQLiteDialect()
POSTGRES = PostgresDialect()


def dialect_for(engine: Engine | Connection) -> Dialect:
    name = engine.dialect.name
    if name == "sqlite":
        return SQLITE
    if name == "postgresql":
        return POSTGRES
    raise ValueError(f"unsupported database {name!r}: use sqlite or postgresql")
