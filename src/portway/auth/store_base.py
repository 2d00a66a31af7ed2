"""What the parts of the user store share: the engines, one read snapshot, one changing
transaction that bumps the security generation, and the clock.

`UserStore` (portway.auth.store) is this with its parts: users (portway.auth.users_store),
roles (portway.auth.roles_store) and refresh tokens (portway.auth.refresh_store).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, select

from portway.auth.passwords import PasswordHasher
from portway.db.auth_schema import security_state
from portway.db.dialect import dialect_for


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

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only snapshot: the statements inside see one state of the database."""
        with self.read_engine.connect() as conn:
            if self.read_engine is not self.engine:
                # SQLite: a deferred BEGIN, a WAL read snapshot that takes no write lock
                with dialect_for(conn).snapshot(conn):
                    yield conn
            else:
                yield conn

    @contextlib.contextmanager
    def _change(self) -> Iterator[Connection]:
        """A transaction that changes users or roles: it also bumps the security generation,
        so every worker's cached logins are checked again on their next use."""
        with self.engine.begin() as conn:
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
