"""Maintenance jobs as a service: what `portway jobs`, the admin API and the web UI call.

    service = root.job_service            # portway/compose.py
    await service.list_jobs()             # [JobView]: configuration, next run, last run
    await service.list_runs("gc", 20)     # [Run], newest first (records.Run)
    await service.run_now("gc", dry_run=True, trigger="manual", requested_by="admin")
    await service.get_run(run_id)         # Run | None, with progress and report
    await service.stop("gc", by="admin")  # stops.Stopping; NotRunning when nothing runs

`run_now` queues a run; a `portway serve` node's scheduler starts it (at once in the process
that queued it, within `[jobs] poll_interval` on the others). Reads and the queueing run in
a thread; every method is a coroutine. `stop` marks the job's running run in the database
(the node running it, whichever it is, stops it within a second) and cancels its queued runs;
it is audited (`job.stop`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from portway.config import JobConfig, Settings
from portway.config_jobs import effective_jobs
from portway.jobs import records
from portway.jobs.cron import parse
from portway.jobs.records import Run
from portway.jobs.stops import Stopping, request_stop

if TYPE_CHECKING:
    from portway.auth.audit import AuditLog


class JobNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no job named {name!r}")
        self.name = name


class JobDisabled(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"job {name!r} is disabled (enabled = false in its [[job]] table)")
        self.name = name


class NotRunning(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"job {name!r} is not running: there is no run of it to stop")
        self.name = name


@dataclass(frozen=True)
class JobView:
    config: JobConfig
    next_run: float | None  # the next fire time (seconds since the epoch), None: unscheduled
    last_run: Run | None  # the newest run, whatever its state
    running: bool  # a run of it is queued or running now

    @property
    def name(self) -> str:
        return self.config.name


class JobService:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        read_engine: Engine,
        audit: Callable[[], AuditLog] | None = None,  # where `stop` is recorded (opened late)
    ) -> None:
        self.jobs = effective_jobs(settings.job)
        self.engine = engine
        self.read_engine = read_engine
        self.on_queued: Callable[[], None] | None = None  # this process's scheduler, if any
        self.audit = audit

    def job(self, name: str) -> JobConfig:
        for job in self.jobs:
            if job.name == name:
                return job
        raise JobNotFound(name)

    def _views(self) -> list[JobView]:
        last = records.last_runs(self.read_engine)
        now = datetime.now(UTC)
        out = []
        for job in self.jobs:
            upcoming = None
            if job.enabled and job.schedule:
                upcoming = parse(job.schedule).next_after(now).timestamp()
            run = last.get(job.name)
            busy = run is not None and run.state in (records.QUEUED, records.RUNNING)
            out.append(JobView(job, upcoming, run, busy))
        return out

    async def list_jobs(self) -> list[JobView]:
        return await asyncio.to_thread(self._views)

    async def get_job(self, name: str) -> JobView:
        self.job(name)
        return next(v for v in await self.list_jobs() if v.name == name)

    async def list_runs(self, job: str | None = None, limit: int = 50) -> list[Run]:
        if job is not None:
            self.job(job)
        return await asyncio.to_thread(records.list_runs, self.read_engine, job, limit)

    async def get_run(self, run_id: int) -> Run | None:
        return await asyncio.to_thread(records.get_run, self.read_engine, run_id)

    async def run_now(
        self,
        name: str,
        dry_run: bool | None = None,
        trigger: str = "manual",
        requested_by: str | None = None,
    ) -> Run:
        """Queue a run of `name` (dry_run None: the job's own setting); returns it queued."""
        job = self.job(name)
        if not job.enabled:
            raise JobDisabled(name)
        wanted = job.dry_run if dry_run is None else dry_run
        run_id = await asyncio.to_thread(
            records.queue_run, self.engine, job.name, job.type, trigger, wanted, requested_by
        )
        if self.on_queued is not None:
            self.on_queued()
        run = await asyncio.to_thread(records.get_run, self.engine, run_id)
        assert run is not None
        return run

    async def stop(
        self, name: str, by: str, client: str | None = None, run_id: int | None = None
    ) -> Stopping:
        """Ask the run of `name` that is running to stop and cancel its queued runs (`run_id`:
        only that run)."""
        job = self.job(name)
        done = await asyncio.to_thread(request_stop, self.engine, job.name, by, run_id)
        if not done.anything:
            raise NotRunning(name)
        if self.audit is not None:
            detail: dict[str, object] = {"job": job.name, "cancelled": list(done.cancelled)}
            if done.running is not None:
                detail["run"] = done.running
            self.audit().write("job.stop", principal=by, client=client, detail=detail)
        return done
