"""The scheduler in every worker of `portway serve` (ADR 0027).

Every `[jobs] poll_interval` seconds one read (records.outlook) tells each worker of each
node which jobs have something to do: a queued run, a fire time that came, or a run left
`running` by a holder whose lease ran out. For each such job the worker contends for the
job's lease through `run_singleton`; the one that gets it settles and runs what is due
(JobRunner.hold) and gives the lease back. The fire time is taken in the same fenced
transaction that starts its run, so each fire time runs once in the cluster, not once per
worker or node; a holder that dies is replaced when its lease has run out, within
`lease_ttl + poll_interval` (< two lease lifetimes with the defaults).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import Engine

from portway.config import JobConfig, JobsConfig
from portway.coordination.interfaces import Leases
from portway.coordination.singleton import run_singleton
from portway.jobs import records
from portway.jobs.cron import Cron, parse
from portway.jobs.runner import JobRunner

log = logging.getLogger("portway.jobs")


def is_due(job: JobConfig, cron: Cron | None, look: records.Outlook) -> bool:
    waiting = look.waiting.get(job.name, [])
    if any(state in (records.QUEUED, "interrupted") for state, _ in waiting):
        return True
    held = look.held.get(job.name)
    if any(state == records.RUNNING and token != held for state, token in waiting):
        return True  # its holder's lease ran out (or moved on): settle it
    if cron is None:
        return False
    last = look.last_fire.get(job.name)
    if last is None:
        return True  # first look at a new job: record where its schedule starts
    due = cron.next_after(datetime.fromtimestamp(last, UTC)).timestamp()
    return due <= look.now


class Scheduler:
    def __init__(
        self,
        jobs: tuple[JobConfig, ...],
        config: JobsConfig,
        engine: Engine,
        leases: Leases,
        runner: JobRunner,
    ) -> None:
        self.jobs = [j for j in jobs if j.enabled]
        self.crons = {j.name: parse(j.schedule) if j.schedule else None for j in self.jobs}
        self.config = config
        self.engine = engine
        self.leases = leases
        self.runner = runner
        self.active: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Look now (a run was queued in this process)."""
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    look = await asyncio.to_thread(records.outlook, self.engine)
                except Exception:
                    log.warning("job scheduler: the database did not answer", exc_info=True)
                else:
                    self._start_due(look)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_interval)
                self._wake.clear()
        finally:
            await self.stop()

    def _start_due(self, look: records.Outlook) -> None:
        for job in self.jobs:
            task = self.active.get(job.name)
            if task is not None and not task.done():
                continue
            if task is not None:
                self._reap(job.name, task)
            cron = self.crons[job.name]
            if is_due(job, cron, look):
                hold = partial(self.runner.hold, job, cron)
                name = records.lease_name(job.name)
                self.active[job.name] = asyncio.create_task(
                    run_singleton(self.leases, name, self.config.lease_ttl, hold)
                )

    def _reap(self, name: str, task: asyncio.Task[None]) -> None:
        del self.active[name]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.warning("job %s: its turn ended with %r", name, exc)

    async def stop(self) -> None:
        """Cancel every turn in progress: a running run is recorded cancelled (interrupted,
        so another node runs it again) and its lease given back."""
        tasks = list(self.active.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.active.clear()
