"""Stopping a job's run (Nexus's `POST /service/rest/v1/tasks/{id}/stop`), from any node.

The request is a row update, so whichever worker or node receives it, the one running the run
sees it: `request_stop` cancels the job's queued runs at once (they never start) and marks
its running run with `stop_requested` and `stopped_by`. The runner holding the run polls that
row every STOP_POLL seconds (`stop_asked`); when it sees the mark, the job stops at its next
unit of work and the run ends `cancelled` with its partial report (runner.py). A run whose
node died meanwhile is recorded stopped by the next lease holder, not run again
(records.claim).

Statements are synchronous; callers run them in a thread; in /metrics they are the
database operations `job_stop` (a write) and `job_stop_asked` (a read).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, select, update

from portway.coordination.leases import database_now
from portway.db.jobs import job_runs
from portway.jobs.records import CANCELLED, QUEUED, RUNNING
from portway.observe.store_latency import database_call

STOP_POLL = 0.5  # seconds between two looks of a running run at its row


@dataclass(frozen=True)
class Stopping:
    """What a stop request did: the running run asked to stop (None: none was running) and
    the queued runs it cancelled."""

    running: int | None
    cancelled: tuple[int, ...]

    @property
    def anything(self) -> bool:
        return self.running is not None or bool(self.cancelled)


@database_call("job_stop", "write")
def request_stop(engine: Engine, job: str, by: str, only: int | None = None) -> Stopping:
    """Stop `job`'s queued and running runs (`only`: just that run of it)."""
    of_job = [job_runs.c.job == job] + ([] if only is None else [job_runs.c.id == only])
    with engine.begin() as conn:
        now = database_now(conn)
        queued = [
            int(r[0])
            for r in conn.execute(
                select(job_runs.c.id).where(*of_job, job_runs.c.state == QUEUED)
            )
        ]
        cancelled = []
        for run_id in queued:  # a runner may take one meanwhile: only what is still queued
            done = conn.execute(
                update(job_runs)
                .where(job_runs.c.id == run_id, job_runs.c.state == QUEUED)
                .values(
                    state=CANCELLED,
                    ended=now,
                    stop_requested=now,
                    stopped_by=by,
                    error=f"stopped by {by} before it started",
                )
            ).rowcount
            if done:
                cancelled.append(run_id)
        # Normally one; also a dead holder's run not settled yet (the next holder records it
        # stopped instead of running it again).
        running = [
            int(r[0])
            for r in conn.execute(
                select(job_runs.c.id)
                .where(*of_job, job_runs.c.state == RUNNING)
                .order_by(job_runs.c.id.desc())
            )
        ]
        if running:  # asked twice: the first request's time and name stay
            conn.execute(
                update(job_runs)
                .where(job_runs.c.id.in_(running), job_runs.c.state == RUNNING)
                .values(
                    stop_requested=func.coalesce(job_runs.c.stop_requested, now),
                    stopped_by=func.coalesce(job_runs.c.stopped_by, by),
                )
            )
    return Stopping(running[0] if running else None, tuple(cancelled))


@database_call("job_stop_asked", "read")
def stop_asked(engine: Engine, run_id: int) -> str | None:
    """Who asked `run_id` to stop; None while nobody has."""
    with engine.connect() as conn:
        row = conn.execute(
            select(job_runs.c.stop_requested, job_runs.c.stopped_by).where(
                job_runs.c.id == run_id
            )
        ).first()
    if row is None or row[0] is None:
        return None
    return str(row[1] or "someone")
