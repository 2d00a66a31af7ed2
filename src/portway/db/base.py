"""The metadata store's plumbing: engines, the writer thread, the read connection, the cache.

Reads run inline (indexed lookups of microseconds on SQLite, one connection per process, WAL
snapshots that never wait for a writer); writes run in the store's writer thread, each in one
transaction (`BEGIN IMMEDIATE` on SQLite), so a manifest and its tags change together or not at
all, and a write lock held elsewhere delays only writes (see portway.db.engine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self, TypeVar

from sqlalchemy import Connection, Engine

from portway.db.dialect import Dialect, dialect_for
from portway.db.engine import DEFAULT_BUSY_TIMEOUT, Writer

T = TypeVar("T")

CACHE_ENTRIES = 20000


class StoreBase:
    def __init__(
        self,
        read_engine: Engine,
        write_engine: Engine,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        self._read_engine = read_engine
        self._write_engine = write_engine
        self.dialect: Dialect = dialect_for(write_engine)
        self._writer = Writer(write_engine, busy_timeout)
        self._reader: Connection | None = None
        # Hot lookups (manifest by tag or digest, blob link size) cached in process. The cache
        # is dropped whenever the database changed since the last look — the dialect's change
        # token, on SQLite `data_version`, moves on any commit by another connection: this
        # process's writer or another worker — so a cached answer is never staler than the
        # database. A dialect without a token (None) caches nothing.
        self._cache: dict[tuple[object, ...], Any] = {}
        self._data_version: object = None

    @property
    def engine(self) -> Engine:
        """The write engine: every transaction on it takes the write lock (BEGIN IMMEDIATE)."""
        return self._write_engine

    @property
    def read_engine(self) -> Engine:
        """The read engine: statements that never take or wait for the write lock."""
        return self._read_engine

    def close(self) -> None:
        self._writer.close()
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
        if self._reader is None:
            self._reader = self._read_engine.connect()
        return self._reader

    def _one(self, stmt: Any) -> Any:
        return self._conn().execute(stmt).first()

    def _cached(self, key: tuple[object, ...], load: Callable[[], T]) -> T:
        version = self.dialect.change_token(self._conn())
        if version is None or version != self._data_version:
            self._cache.clear()
            self._data_version = version
        try:
            return self._cache[key]  # type: ignore[no-any-return]
        except KeyError:
            pass
        value = load()
        if version is not None:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = value
        return value

    async def _write(self, fn: Callable[[Connection], T]) -> T:
        return await self._writer.run(fn)
