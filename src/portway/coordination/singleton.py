"""Run a job on one node of a cluster at a time: the node holding its lease runs it.

`run_singleton(leases, name, ttl, job)` contends for the lease every `ttl / 2` seconds; the
holder runs `job(lease)` and renews every `ttl / 3`. If the holder dies its lease runs out
within `ttl` and a contender takes it at its next look: within 1.5 `ttl` of the death, less
than two lease lifetimes. If a renewal finds the lease lost (the holder was paused past its
lease), the job is cancelled; its writes are fenced by the token (`Leases.fence`) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from portway.coordination.interfaces import Lease, Leases

log = logging.getLogger("portway.coordination")

Job = Callable[[Lease], Awaitable[None]]


async def run_singleton(leases: Leases, name: str, ttl: float, job: Job) -> None:
    """Until `job` returns (then the lease is released) or this task is cancelled."""
    while True:
        lease = await leases.acquire(name, ttl)
        if lease is None:
            await asyncio.sleep(ttl / 2)
            continue
        log.info("job %s: this node holds the lease (token %d)", name, lease.token)
        if await _hold(leases, lease, ttl, job):
            return


async def _hold(leases: Leases, lease: Lease, ttl: float, job: Job) -> bool:
    """Run the job under `lease`; True when it ended by itself, False when the lease was lost."""
    name = lease.name
    task = asyncio.ensure_future(job(lease))
    try:
        while True:
            done, _ = await asyncio.wait([task], timeout=ttl / 3)
            if done:
                await leases.release(lease)
                task.result()
                return True
            renewed = await leases.renew(lease, ttl)
            if renewed is None:
                log.warning("job %s: lease lost (token %d); stopping here", name, lease.token)
                return False
            lease = renewed
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
