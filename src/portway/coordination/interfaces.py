"""Small protocols for coordination; one-host and cluster implementations answer them alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection


class Lock(Protocol):
    """An exclusive lock on one name among every holder that shares the `Locks` behind it:
    the lock objects of one process, the workers of a server, the nodes of a cluster."""

    name: str

    @property
    def held(self) -> bool: ...

    async def try_acquire(self) -> bool:
        """Take it if it is free (True), else False at once; True again if already held."""
        ...

    async def acquire(self) -> None:
        """Wait until it is ours."""
        ...

    async def release(self) -> None:
        """Let it go (nothing when not held)."""
        ...


class Locks(Protocol):
    def lock(self, name: str) -> Lock:
        """A lock object for `name` (not taken yet). Names: at most 128 characters."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Lease:
    """One holder's claim on a named job until `expires` (seconds since the epoch, by the
    database's clock). `token` grows at every change of holder: work that a lease guards
    checks it (`Leases.fence`) so a holder that lost the lease cannot act on old authority."""

    name: str
    holder: str
    token: int
    expires: float


class LeaseLost(Exception):
    """The lease expired and another holder took it (or it was released)."""


class Leases(Protocol):
    holder: str

    async def acquire(self, name: str, ttl: float) -> Lease | None:
        """The lease for `ttl` seconds when nobody holds it (or its holder's time ran out),
        with a new token; None while another holder's lease runs."""
        ...

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend our lease by `ttl` from now; None when it was lost meanwhile."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give the lease up at once (the next contender need not wait for it to expire)."""
        ...

    def fence(self, conn: Connection, lease: Lease) -> None:
        """Inside a write transaction: raise LeaseLost unless `lease` is still the current one
        (its token unchanged), so the transaction's writes are made on valid authority."""
        ...
