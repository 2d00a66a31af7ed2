"""Change signals for the metadata store's read cache (ADR 0019, ADR 0021).

A `ChangeSignal` gives a token that moves whenever the database may have changed, checked
before every cached lookup without a database round trip on the hot path:

- SQLite (one host): `PRAGMA data_version` on the store's read connection; it moves on any
  commit by another connection (this process's writer, another worker, a `portway` command).
- PostgreSQL (a cluster): every write transaction of every node ends with
  `NOTIFY portway_changes` (delivered at commit, to every listening session); each process
  keeps one connection in `LISTEN portway_changes`, in a thread of its own, and the token is a
  counter that thread bumps at each notification. The process's own writes bump it at once
  after they commit. While the listening connection is down the token is None: nothing is
  cached and every lookup asks the database, until it is back (then the counter moves, so
  nothing cached before the gap is used).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import Connection, Engine, text

log = logging.getLogger("portway.db")

CHANNEL = "portway_changes"
NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', '')")
RECONNECT_DELAY = 0.5  # seconds between attempts while the database cannot be reached


class ChangeSignal(Protocol):
    def token(self) -> object | None:
        """A value that differs from any earlier one once the database changed; None while
        changes cannot be seen (then nothing may be cached)."""
        ...

    def written(self) -> None:
        """This process committed a change."""
        ...

    def close(self) -> None: ...


class DataVersion:
    """SQLite's `PRAGMA data_version` on the read connection, read once per turn of the event
    loop (a read costs about 4 us, and a request makes several cached lookups).

    A value read in one turn is used only by callbacks already queued when it was read: the
    turn's end (a `call_soon` made at the read) forgets it. Whatever woke those callbacks (a
    request's bytes, a thread's commit) happened before the read, so the value reflects it.
    What the same callback commits itself after the read must call `written()`."""

    def __init__(self, reader: Callable[[], Connection]) -> None:
        self._reader = reader
        self._loop: asyncio.AbstractEventLoop | None = None  # the turn's loop, while it lasts
        self._value: object | None = None

    def token(self) -> object | None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and loop is self._loop:
            return self._value
        dbapi = self._reader().connection.dbapi_connection
        value = dbapi.execute("PRAGMA data_version").fetchone()[0] if dbapi else None
        if loop is not None and value is not None:
            self._loop, self._value = loop, value
            loop.call_soon(self._forget)
        return value

    def _forget(self) -> None:
        self._loop = None

    def written(self) -> None:
        # The writer is another connection, so data_version moves by itself; only this
        # turn's value must go.
        self._loop = None

    def close(self) -> None:
        return None


class Notifications:
    """PostgreSQL LISTEN/NOTIFY: a counter bumped by a listener thread and by our writes."""

    def __init__(self, engine: Engine, poll: float = 1.0) -> None:
        url = engine.url.set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._poll = poll
        self._lock = threading.Lock()
        self._count = 0
        self._listening = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="portway-db-listen", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)  # the first connection, so a new store caches from the start

    def token(self) -> object | None:
        return self._count if self._listening else None

    def written(self) -> None:
        self._bump()

    def _bump(self) -> None:
        with self._lock:
            self._count += 1

    def _run(self) -> None:
        import psycopg  # only a PostgreSQL node pays for the driver's import

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._bump()  # whatever changed while we were not listening
                    self._listening = True
                    self._ready.set()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=self._poll):
                            self._bump()
            except psycopg.Error as exc:
                if self._listening:
                    log.warning("metadata change notifications lost (%s); reconnecting", exc)
            finally:
                self._listening = False
                self._ready.set()
            self._stop.wait(RECONNECT_DELAY)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._poll + 2)


def change_signal(engine: Engine, reader: Callable[[], Connection]) -> ChangeSignal:
    """`reader`: the store's read connection (SQLite reads data_version on it)."""
    if engine.dialect.name == "postgresql":
        return Notifications(engine)
    return DataVersion(reader)


def notify_change(conn: Connection) -> None:
    """At the end of a write transaction: tell every node's listener (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.execute(NOTIFY)
