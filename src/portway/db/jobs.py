"""Tables of maintenance jobs (ADR 0027): every run of a job, and each job's last fire time.

- `job_runs`: one row per run. `state`: queued (asked for, not started), running, done,
  failed, cancelled. `token` is the job lease's fencing token the run was started under and
  `node` the process that ran it; every write after the start checks that the lease still
  has that token (`Leases.fence`), so a node that lost its lease cannot write a report.
  `stop_requested` and `stopped_by`: a stop asked for through the API (any node); the node
  running the run polls its row and stops between units of work.
  `heartbeat` is the last such write (database clock): the run's authority ended no later
  than that plus the lease's lifetime. `progress` and `report` are JSON.
- `job_schedule`: the fire time a job's schedule last started a run for, so every node
  agrees which fire time is due and each runs once.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, String, Table, Text

from portway.db.schema import BigId, metadata

job_runs = Table(
    "job_runs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("trigger", String(16), nullable=False),  # schedule | manual | cli
    Column("dry_run", Integer, nullable=False, default=0),
    Column("state", String(16), nullable=False),
    Column("requested_by", String(128)),
    Column("fire_time", Float),  # schedule: the fire time this run is for
    Column("retry_of", BigInteger),  # the interrupted run this one runs again
    Column("node", String(128)),
    Column("token", BigInteger),
    Column("queued", Float, nullable=False),
    Column("started", Float),
    Column("ended", Float),
    Column("heartbeat", Float),
    Column("phase", String(64)),
    Column("progress", Text),
    Column("report", Text),
    Column("error", Text),
    Column("interrupted", Integer, nullable=False, default=0),
    Column("stop_requested", Float),  # when a stop was asked for (database clock)
    Column("stopped_by", String(128)),  # who asked
)
Index("ix_job_runs_job", job_runs.c.job, job_runs.c.id)
Index("ix_job_runs_state", job_runs.c.state)

job_schedule = Table(
    "job_schedule",
    metadata,
    Column("job", String(64), primary_key=True),
    Column("last_fire", Float, nullable=False),
    Column("updated", Float, nullable=False),
)
