"""What the parts of the user store share: the engines, one read snapshot, one changing
transaction that bumps the security generation, and the clock. Each snapshot and
transaction is one database call in /metrics (portway.observe.store_latency), named by the
store method that made it.

`UserStore` (portway.auth.store) is this with its parts: users (portway.auth.users_store),
roles (portway.auth.roles_store) and refresh tokens (portway.auth.refresh_store).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, select

from portway.auth.passwords import PasswordHasher
from portway.db.auth_schema import security_state
from portway.db.dialect import dialect_for
from portway.observe.store_latency import timed_database

Block = contextlib.AbstractContextManager[Connection]


class StoreError(ValueError):
    """A refused change (unknown user or role, duplicate, reserved name); message for the user."""


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class StoreBase:
    def __init__(
        self,
        engine: Engine,
        hasher: PasswordHasher | None = None,
        *,
        read_engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.read_engine = read_engine if read_engine is not None else engine
        self.hasher = hasher or PasswordHasher()
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _read(self, operation: str | None = None) -> Block:
        """A read-only snapshot: the statements inside see one state of the database. Timed
        for /metrics as one read named `operation`, by default the calling method's name."""
        return self._snapshot(operation or sys._getframe(1).f_code.co_name)

    def _change(self, operation: str | None = None) -> Block:
        """A transaction that changes users or roles: it also bumps the security generation,
        so every worker's cached logins are checked again on their next use. Timed as one
        write named `operation` (by default the calling method's name)."""
        return self._changing(operation or sys._getframe(1).f_code.co_name)

    def _write(self, operation: str | None = None) -> Block:
        """A transaction that changes no user or role (refresh tokens, a rehashed password),
        timed as `_change` is."""
        return self._writing(operation or sys._getframe(1).f_code.co_name)

    @contextlib.contextmanager
    def _writing(self, operation: str) -> Iterator[Connection]:
        with timed_database(operation, "write"), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _snapshot(self, operation: str) -> Iterator[Connection]:
        with timed_database(operation, "read"), self.read_engine.connect() as conn:
            if self.read_engine is not self.engine:
                # SQLite: a deferred BEGIN, a WAL read snapshot that takes no write lock
                with dialect_for(conn).snapshot(conn):
                    yield conn
            else:
                yield conn

    @contextlib.contextmanager
    def _changing(self, operation: str) -> Iterator[Connection]:
        with timed_database(operation, "write"), self.engine.begin() as conn:
            bump = dialect_for(conn).insert(security_state).values(id=1, generation=1)
            conn.execute(
                bump.on_conflict_do_update(
                    index_elements=["id"],
                    set_={"generation": security_state.c.generation + 1},
                )
            )
            yield conn

    def generation(self) -> int:
        """Changes to users and roles so far (any worker, any `portway user|role` command)."""
        with self._read() as conn:
            value = conn.execute(select(security_state.c.generation)).scalar()
        return int(value or 0)
