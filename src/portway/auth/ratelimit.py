"""Failed-login limits, counted in the database so every worker (and every node sharing the
database) sees the same counts.

Two limits, each a sliding window of `window` seconds:

- per (user, client address): after `max_failures` failures for one user from one address,
  that user is refused from that address until the oldest of them leaves the window;
- per client address: after `max_failures_per_address` failures from one address, whatever
  the user names, every login from that address is refused likewise.

No limit counts a user over all addresses: a stranger's failures must not lock a user out from
another address. A success forgives the pair's failures, not the address's, so a valid
account cannot be used to reset an address that guesses at others. `unlock(user)` forgives a
user's failures from every address (and, given an address, that address's too).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Engine, and_, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from portway.db.auth_schema import login_failures as failures

log = logging.getLogger("portway.auth")
NO_ADDRESS = "-"


@dataclass(frozen=True)
class Lockout:
    """A refused attempt: what is locked (`user` at an address, or the `address`) and for how
    many whole seconds."""

    key: str
    retry_after: int


class LoginLimiter:
    def __init__(
        self,
        engine: Engine,
        max_failures: int = 10,
        window: float = 300.0,
        *,
        max_failures_per_address: int = 30,
        read_engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_failures < 1 or max_failures_per_address < 1 or window <= 0:
            raise ValueError("max_failures >= 1, max_failures_per_address >= 1, window > 0")
        self.engine = engine
        # Checks (before every password check, even a cached one) never wait for the write
        # lock: they read through the read engine when there is one (docs/adr/0008).
        self.read_engine = read_engine if read_engine is not None else engine
        self.max_failures = max_failures
        self.max_per_address = max_failures_per_address
        self.window = window
        self._clock = clock

    @staticmethod
    def _names(user: str | None, client_addr: str | None) -> tuple[str, str]:
        return (user or "")[:256], (client_addr or NO_ADDRESS)[:64]

    def check(self, user: str | None, client_addr: str | None) -> Lockout | None:
        """Before checking a password: a `Lockout` when a limit is reached, else None."""
        name, address = self._names(user, client_addr)
        now = self._clock()
        query = (
            select(failures.c.username, failures.c.at, failures.c.cleared)
            .where(failures.c.address == address, failures.c.at > now - self.window)
            .order_by(failures.c.at)
        )
        try:
            with self.read_engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            log.warning("cannot read failed-login counts, not limiting this login: %s", exc)
            return None
        by_address = [r.at for r in rows]
        by_pair = [r.at for r in rows if r.username == name and not r.cleared]
        worst: Lockout | None = None
        for key, stamps, limit in (
            ("user", by_pair, self.max_failures),
            ("address", by_address, self.max_per_address),
        ):
            if len(stamps) >= limit:
                # Locked until enough of them leave the window to fall below the limit.
                wait = max(1, math.ceil(stamps[-limit] + self.window - now))
                if worst is None or wait > worst.retry_after:
                    worst = Lockout(key, wait)
        return worst

    def failure(self, user: str | None, client_addr: str | None) -> Lockout | None:
        """Record a failed login; returns the lockout it causes, if any."""
        name, address = self._names(user, client_addr)
        now = self._clock()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(failures).values(address=address, username=name, at=now, cleared=False)
                )
                conn.execute(delete(failures).where(failures.c.at <= now - self.window))
        except SQLAlchemyError as exc:
            log.warning("cannot record a failed login from %s: %s", address, exc)
            return None
        return self.check(user, client_addr)

    def success(self, user: str, client_addr: str | None) -> None:
        """Forgive the pair's failures (the address keeps its count)."""
        name, address = self._names(user, client_addr)
        pair = and_(failures.c.username == name, failures.c.address == address)
        try:
            with self.read_engine.connect() as conn:
                pending = (
                    conn.execute(
                        select(failures.c.at).where(pair, failures.c.cleared.is_(False)).limit(1)
                    ).first()
                    is not None
                )
        except SQLAlchemyError:
            pending = True  # cannot tell: clear, as before
        if pending:  # a write only when there is something to forgive
            self._clear(pair)

    def unlock(self, user: str, client_addr: str | None = None) -> int:
        """Forgive `user`'s failures from every address and, with `client_addr`, every failure
        from that address. Returns how many failures were forgiven."""
        name = user[:256]
        if client_addr is None:
            return self._clear(failures.c.username == name)
        address = client_addr[:64]
        try:
            with self.engine.begin() as conn:
                done = conn.execute(delete(failures).where(failures.c.address == address))
                cleared = conn.execute(
                    update(failures)
                    .where(failures.c.username == name, failures.c.cleared.is_(False))
                    .values(cleared=True)
                )
            return int(done.rowcount) + int(cleared.rowcount)
        except SQLAlchemyError as exc:
            log.warning("cannot clear failed logins: %s", exc)
            return 0

    def _clear(self, where: ColumnElement[bool]) -> int:
        try:
            with self.engine.begin() as conn:
                done = conn.execute(
                    update(failures)
                    .where(where, failures.c.cleared.is_(False))
                    .values(cleared=True)
                )
            return int(done.rowcount)
        except SQLAlchemyError as exc:
            log.warning("cannot clear failed logins: %s", exc)
            return 0
