"""Job runs in the database (db/jobs.py): what every node reads, and the fenced writes of
the node that holds a job's lease.

A run's life: queued (run now) or straight to running (a fire time, taken under the lease) ->
running, with a heartbeat and progress every few seconds -> done | failed | cancelled. Every
write after the start is made in a transaction that first checks the lease's fencing token
(`Leases.fence`): a node that lost its lease (paused, cut off, killed) cannot write again.
The next holder finds that node's run still `running` under an older token, marks it failed
("interrupted") and runs it once more (the same fire time, trigger and dry-run setting); a
run that is itself such a re-run is not run a third time.

Statements are synchronous; callers run them in a thread. Each function is one database
call in /metrics, `operation` `job_run`, `job_runs`, `job_last_runs`, `job_outlook` (reads),
`job_queue`, `job_claim`, `job_heartbeat`, `job_finish` (writes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update

from portway.coordination.interfaces import Lease, Leases
from portway.coordination.leases import database_now
from portway.db.jobs import job_runs, job_schedule
from portway.db.shared_schema import leases as lease_rows
from portway.jobs.cron import Cron
from portway.observe.store_latency import database_call

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
TRIGGERS = ("schedule", "manual", "cli")
STOPPED_GONE = (
    "stopped by {by}; its node stopped holding the job's lease before it recorded the end, "
    "so its report is lost: what it deleted is gone, the rest is left for the next run"
)
LEASE_PREFIX = "job:"


def lease_name(job: str) -> str:
    return LEASE_PREFIX + job


@dataclass(frozen=True)
class Run:
    id: int
    job: str
    type: str
    trigger: str
    dry_run: bool
    state: str
    requested_by: str | None
    fire_time: float | None
    retry_of: int | None
    node: str | None
    token: int | None
    queued: float
    started: float | None
    ended: float | None
    heartbeat: float | None
    phase: str | None
    progress: dict[str, Any]
    report: dict[str, Any] | None
    error: str | None
    interrupted: bool
    stop_requested: float | None = None  # a stop was asked for at (stops.py)
    stopped_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _run(row: Any) -> Run:
    m = row._mapping
    return Run(
        id=int(m["id"]),
        job=str(m["job"]),
        type=str(m["type"]),
        trigger=str(m["trigger"]),
        dry_run=bool(m["dry_run"]),
        state=str(m["state"]),
        requested_by=m["requested_by"],
        fire_time=m["fire_time"],
        retry_of=None if m["retry_of"] is None else int(m["retry_of"]),
        node=m["node"],
        token=None if m["token"] is None else int(m["token"]),
        queued=float(m["queued"]),
        started=m["started"],
        ended=m["ended"],
        heartbeat=m["heartbeat"],
        phase=m["phase"],
        progress=json.loads(m["progress"]) if m["progress"] else {},
        report=json.loads(m["report"]) if m["report"] else None,
        error=m["error"],
        interrupted=bool(m["interrupted"]),
        stop_requested=m["stop_requested"],
        stopped_by=m["stopped_by"],
    )


# -- reads (any node) ---------------------------------------------------------------------


@database_call("job_run", "read")
def get_run(engine: Engine, run_id: int) -> Run | None:
    with engine.connect() as conn:
        row = conn.execute(select(job_runs).where(job_runs.c.id == run_id)).first()
    return None if row is None else _run(row)


@database_call("job_runs", "read")
def list_runs(engine: Engine, job: str | None = None, limit: int = 50) -> list[Run]:
    """Newest first."""
    stmt = select(job_runs).order_by(job_runs.c.id.desc()).limit(limit)
    if job is not None:
        stmt = stmt.where(job_runs.c.job == job)
    with engine.connect() as conn:
        return [_run(r) for r in conn.execute(stmt)]


@database_call("job_last_runs", "read")
def last_runs(engine: Engine) -> dict[str, Run]:
    """Each job's newest run."""
    newest = select(func.max(job_runs.c.id)).group_by(job_runs.c.job)
    with engine.connect() as conn:
        rows = conn.execute(select(job_runs).where(job_runs.c.id.in_(newest)))
        return {r.job: r for r in map(_run, rows)}


@dataclass(frozen=True)
class Outlook:
    """What the scheduler polls for, per job: queued or running runs, the lease's holder
    token (None when nobody holds it), each schedule's last fire time; and the time now."""

    waiting: dict[str, list[tuple[str, int | None]]]  # job -> [(state, token)]
    held: dict[str, int]  # job -> token of the lease someone holds now
    last_fire: dict[str, float]
    now: float


@database_call("job_outlook", "read")
def outlook(engine: Engine) -> Outlook:
    with engine.connect() as conn:
        now = database_now(conn)
        waiting: dict[str, list[tuple[str, int | None]]] = {}
        rerun = and_(  # a run interrupted and not run again yet
            job_runs.c.interrupted == 1,
            job_runs.c.retry_of.is_(None),
        )
        for job, state, token, again in conn.execute(
            select(job_runs.c.job, job_runs.c.state, job_runs.c.token, rerun).where(
                or_(job_runs.c.state.in_((QUEUED, RUNNING)), rerun)
            )
        ):
            shown = "interrupted" if again and state not in (QUEUED, RUNNING) else str(state)
            waiting.setdefault(str(job), []).append((shown, token))
        held = {
            str(name)[len(LEASE_PREFIX) :]: int(token)
            for name, token in conn.execute(
                select(lease_rows.c.name, lease_rows.c.token).where(
                    lease_rows.c.name.like(LEASE_PREFIX + "%"), lease_rows.c.expires > now
                )
            )
        }
        last_fire = {
            str(job): float(fire)
            for job, fire in conn.execute(select(job_schedule.c.job, job_schedule.c.last_fire))
        }
    return Outlook(waiting, held, last_fire, now)


# -- writes -------------------------------------------------------------------------------


@database_call("job_queue", "write")
def queue_run(
    engine: Engine, job: str, kind: str, trigger: str, dry_run: bool, requested_by: str | None
) -> int:
    with engine.begin() as conn:
        result = conn.execute(
            insert(job_runs).values(
                job=job,
                type=kind,
                trigger=trigger,
                dry_run=int(dry_run),
                state=QUEUED,
                requested_by=requested_by,
                queued=database_now(conn),
                interrupted=0,
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])


def _start(conn: Connection, lease: Lease, now: float, **values: Any) -> int:
    result = conn.execute(
        insert(job_runs).values(
            state=RUNNING,
            node=lease.holder,
            token=lease.token,
            queued=now,
            started=now,
            heartbeat=now,
            interrupted=0,
            **values,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


@database_call("job_claim", "write")
def claim(
    engine: Engine,
    leases: Leases,
    lease: Lease,
    job: str,
    kind: str,
    cron: Cron | None,
    dry_run: bool,
) -> int | None:
    """Under `lease`: settle runs an earlier holder left, then start what is due (a re-run of
    an interrupted fire time, the oldest queued run, the schedule's fire time), in one
    fenced transaction. The run id started, or None when nothing is due."""
    from datetime import UTC, datetime

    with engine.begin() as conn:
        leases.fence(conn, lease)
        now = database_now(conn)
        where_job = job_runs.c.job == job
        earlier = (where_job, job_runs.c.state == RUNNING, job_runs.c.token != lease.token)
        for stopped, by in conn.execute(  # asked to stop: it is stopped, not run again
            select(job_runs.c.id, job_runs.c.stopped_by).where(
                *earlier, job_runs.c.stop_requested.is_not(None)
            )
        ):
            conn.execute(
                update(job_runs)
                .where(job_runs.c.id == stopped)
                .values(state=CANCELLED, ended=now, error=STOPPED_GONE.format(by=by))
            )
        conn.execute(  # an earlier holder's run: it died or lost its lease
            update(job_runs)
            .where(*earlier)
            .values(
                state=FAILED,
                ended=now,
                interrupted=1,
                error="interrupted: its node stopped holding the job's lease (stopped, "
                "killed or cut off); it is run again once",
            )
        )
        again = conn.execute(
            select(
                job_runs.c.id,
                job_runs.c.fire_time,
                job_runs.c.dry_run,
                job_runs.c.trigger,
                job_runs.c.requested_by,
            )
            .where(
                where_job,
                job_runs.c.interrupted == 1,
                job_runs.c.retry_of.is_(None),
                job_runs.c.state.in_((FAILED, CANCELLED)),
            )
            .order_by(job_runs.c.id.desc())
            .limit(1)
        ).first()
        if again is not None:
            conn.execute(update(job_runs).where(job_runs.c.id == again[0]).values(interrupted=2))
            return _start(
                conn,
                lease,
                now,
                job=job,
                type=kind,
                trigger=again[3],
                requested_by=again[4],
                dry_run=int(again[2]),
                fire_time=again[1],
                retry_of=int(again[0]),
            )
        while True:  # the oldest queued run (one stopped meanwhile is no longer queued)
            queued = conn.execute(
                select(job_runs.c.id)
                .where(where_job, job_runs.c.state == QUEUED)
                .order_by(job_runs.c.id)
                .limit(1)
            ).first()
            if queued is None:
                break
            taken = conn.execute(
                update(job_runs)
                .where(job_runs.c.id == queued[0], job_runs.c.state == QUEUED)
                .values(
                    state=RUNNING, node=lease.holder, token=lease.token, started=now, heartbeat=now
                )
            ).rowcount
            if taken:
                return int(queued[0])
        if cron is None:
            return None
        last = conn.execute(
            select(job_schedule.c.last_fire).where(job_schedule.c.job == job)
        ).scalar()
        at = datetime.fromtimestamp(now, UTC)
        if last is None:  # a new job: its first fire time is the next one
            conn.execute(insert(job_schedule).values(job=job, last_fire=now, updated=now))
            return None
        if cron.next_after(datetime.fromtimestamp(float(last), UTC)) > at:
            return None
        fire = cron.previous_before(at).timestamp()  # the latest missed one runs, once
        conn.execute(
            update(job_schedule)
            .where(job_schedule.c.job == job)
            .values(last_fire=fire, updated=now)
        )
        return _start(
            conn,
            lease,
            now,
            job=job,
            type=kind,
            trigger="schedule",
            dry_run=int(dry_run),
            fire_time=fire,
        )


@database_call("job_heartbeat", "write")
def heartbeat(
    engine: Engine,
    leases: Leases,
    lease: Lease,
    run_id: int,
    phase: str,
    progress: dict[str, Any],
) -> None:
    with engine.begin() as conn:
        leases.fence(conn, lease)
        conn.execute(
            update(job_runs)
            .where(job_runs.c.id == run_id, job_runs.c.token == lease.token)
            .values(heartbeat=database_now(conn), phase=phase, progress=json.dumps(progress))
        )


@database_call("job_finish", "write")
def finish(
    engine: Engine,
    leases: Leases,
    lease: Lease,
    run_id: int,
    state: str,
    report: dict[str, Any] | None,
    error: str | None,
    keep: int,
    interrupted: bool = False,
) -> None:
    with engine.begin() as conn:
        leases.fence(conn, lease)
        now = database_now(conn)
        conn.execute(
            update(job_runs)
            .where(job_runs.c.id == run_id, job_runs.c.token == lease.token)
            .values(
                state=state,
                ended=now,
                heartbeat=now,
                report=None if report is None else json.dumps(report),
                error=error,
                interrupted=int(interrupted),
            )
        )
        job = conn.execute(select(job_runs.c.job).where(job_runs.c.id == run_id)).scalar()
        cutoff = conn.execute(
            select(job_runs.c.id)
            .where(job_runs.c.job == job)
            .order_by(job_runs.c.id.desc())
            .offset(keep)
            .limit(1)
        ).scalar()
        if cutoff is not None:
            conn.execute(
                delete(job_runs).where(
                    and_(
                        job_runs.c.job == job,
                        job_runs.c.id <= cutoff,
                        job_runs.c.state.not_in((QUEUED, RUNNING)),
                    )
                )
            )
