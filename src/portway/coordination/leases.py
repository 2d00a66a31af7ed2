"""Leases as rows of the metadata database (`leases`: name, holder, token, expires).

Taking a lease is one upsert that succeeds only when the row is missing or its time ran out,
and bumps the fencing token: two contenders on two nodes can never both hold it. Time is the
database's clock on PostgreSQL (`clock_timestamp()`), so the nodes' clocks need not agree;
SQLite is one host and uses the host's. Statements run in a thread, never on the event loop;
each is timed in the database histogram as `lease_acquire`, `lease_renew` or `lease_release`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid

from sqlalchemy import ColumnElement, Connection, Engine, select, text, update

from portway.coordination.interfaces import Lease, LeaseLost
from portway.db.dialect import dialect_for
from portway.db.shared_schema import leases
from portway.observe.store_latency import database_call


def node_name() -> str:
    """This process among the cluster's: host name, process id, a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_PG_NOW = text("SELECT extract(epoch FROM clock_timestamp())")


def database_now(conn: Connection) -> float:
    if conn.dialect.name == "postgresql":
        return float(conn.execute(_PG_NOW).scalar_one())
    return time.time()


class DatabaseLeases:
    """`Leases` on the metadata database's write engine."""

    def __init__(self, engine: Engine, holder: str | None = None) -> None:
        self._engine = engine
        self.holder = holder or node_name()

    async def acquire(self, name: str, ttl: float) -> Lease | None:
        return await asyncio.to_thread(self._acquire, name, ttl)

    @database_call("lease_acquire", "write")
    def _acquire(self, name: str, ttl: float) -> Lease | None:
        with self._engine.begin() as conn:
            now = database_now(conn)
            stmt = dialect_for(conn).insert(leases).values(
                name=name, holder=self.holder, token=1, expires=now + ttl
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["name"],
                set_={
                    "holder": stmt.excluded.holder,
                    "token": leases.c.token + 1,
                    "expires": stmt.excluded.expires,
                },
                where=leases.c.expires <= now,
            ).returning(leases.c.token)
            token = conn.execute(stmt).scalar()
        if token is None:
            return None
        return Lease(name, self.holder, int(token), now + ttl)

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        return await asyncio.to_thread(self._renew, lease, ttl)

    @database_call("lease_renew", "write")
    def _renew(self, lease: Lease, ttl: float) -> Lease | None:
        with self._engine.begin() as conn:
            now = database_now(conn)
            done = conn.execute(
                update(leases)
                .where(*self._ours(lease), leases.c.expires > now)
                .values(expires=now + ttl)
            )
        if not done.rowcount:
            return None
        return Lease(lease.name, lease.holder, lease.token, now + ttl)

    async def release(self, lease: Lease) -> None:
        await asyncio.to_thread(self._release, lease)

    @database_call("lease_release", "write")
    def _release(self, lease: Lease) -> None:
        # The row stays (expired), so the next holder's token is still higher than ours.
        with self._engine.begin() as conn:
            conn.execute(update(leases).where(*self._ours(lease)).values(expires=0.0))

    def fence(self, conn: Connection, lease: Lease) -> None:
        row = conn.execute(
            select(leases.c.token, leases.c.expires).where(leases.c.name == lease.name)
        ).first()
        if row is None or int(row[0]) != lease.token or float(row[1]) <= database_now(conn):
            raise LeaseLost(f"lease {lease.name!r} (token {lease.token}) is no longer ours")

    def current(self, name: str) -> Lease | None:
        """Who holds `name` now (for `portway doctor` and tests); None when nobody does."""
        with self._engine.connect() as conn:
            row = conn.execute(select(leases).where(leases.c.name == name)).first()
            if row is None or row.expires <= database_now(conn):
                return None
        return Lease(row.name, row.holder, int(row.token), float(row.expires))

    @staticmethod
    def _ours(lease: Lease) -> tuple[ColumnElement[bool], ...]:
        return (
            leases.c.name == lease.name,
            leases.c.holder == lease.holder,
            leases.c.token == lease.token,
        )
