"""Maintenance jobs in the admin API: Nexus's `/service/rest/v1/tasks` (a task is a job, its
id the job's name) and Portway's `/api/v1/jobs` (runs with progress and reports). Both need
the admin privilege `settings` (ADR 0027). The handlers call `JobService` only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from portway.api.problems import Problem
from portway.api.routing import Call, Operation, Param, json_response, no_content
from portway.jobs.records import Run
from portway.jobs.services import JobDisabled, JobNotFound, JobService, JobView, NotRunning

PRIVILEGE = "settings"
NEXUS_RESULTS = {"done": "OK", "failed": "FAILED", "cancelled": "CANCELED"}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


# -- Nexus ---------------------------------------------------------------------------------


class TaskXO(BaseModel):
    id: str
    name: str
    type: str
    message: str | None = None
    currentState: str
    lastRunResult: str | None = None
    nextRun: str | None = None
    lastRun: str | None = None


class PageTaskXO(BaseModel):
    items: list[TaskXO]
    continuationToken: str | None = None


def task_of(view: JobView) -> TaskXO:
    last = view.last_run
    if last is not None and last.state == "running":
        state = "RUNNING"
    elif view.next_run is not None or view.running:
        state = "WAITING"
    else:
        state = "DONE"  # nothing scheduled: runs only when asked
    message = None
    if last is not None:
        message = last.error or (last.report or {}).get("summary") or last.state
    return TaskXO(
        id=view.name,
        name=view.name,
        type=view.config.type,
        message=message,
        currentState=state,
        lastRunResult=NEXUS_RESULTS.get(last.state) if last is not None else None,
        nextRun=_iso(view.next_run),
        lastRun=_iso(last.started or last.queued) if last is not None else None,
    )


def _service(call: Call) -> JobService:
    service = call.services.jobs
    if service is None:
        raise Problem(404, "maintenance jobs are not available here")
    return service


async def _view(call: Call, name: str) -> JobView:
    try:
        return await _service(call).get_job(name)
    except JobNotFound as exc:
        raise Problem(404, str(exc)) from None


async def list_tasks(call: Call) -> web.StreamResponse:
    kind = call.query("type")
    views = await _service(call).list_jobs()
    items = [task_of(v) for v in views if kind is None or v.config.type == kind]
    return json_response(PageTaskXO(items=items).model_dump())


async def get_task(call: Call) -> web.StreamResponse:
    return json_response(task_of(await _view(call, call.path("id"))).model_dump())


def _client(call: Call) -> str | None:
    from portway.http.forwarded import client_address

    return client_address(call.request, call.ctx.trusted)


async def stop_task(call: Call) -> web.StreamResponse:
    """Nexus: 204 once the running run is asked to stop (it ends at its next unit of work,
    on whichever node runs it), 404 no such task, 409 nothing of it is running."""
    try:
        await _service(call).stop(call.path("id"), call.actor, _client(call))
    except JobNotFound as exc:
        raise Problem(404, str(exc)) from None
    except NotRunning as exc:
        raise Problem(409, str(exc)) from None
    return no_content()


async def run_task(call: Call) -> web.StreamResponse:
    try:
        await _service(call).run_now(call.path("id"), None, "manual", call.actor)
    except JobNotFound as exc:
        raise Problem(404, str(exc)) from None
    except JobDisabled as exc:
        raise Problem(405, str(exc)) from None
    return no_content()


# -- Portway -------------------------------------------------------------------------------


class JobRun(BaseModel):
    id: int
    job: str
    type: str
    trigger: str  # schedule | manual | cli
    dryRun: bool
    state: str  # queued | running | done | failed | cancelled
    requestedBy: str | None = None
    fireTime: str | None = None
    retryOf: int | None = None  # the interrupted run this one runs again
    node: str | None = None
    leaseToken: int | None = None
    queued: str | None = None
    started: str | None = None
    ended: str | None = None
    heartbeat: str | None = None
    phase: str | None = None
    progress: dict[str, int] = {}
    report: dict[str, Any] | None = None
    error: str | None = None
    interrupted: bool = False
    stopRequested: str | None = None  # a stop was asked for (POST .../stop)
    stoppedBy: str | None = None


class Job(BaseModel):
    name: str
    type: str
    schedule: str  # cron, UTC; "" runs only when asked
    enabled: bool
    dryRun: bool
    policy: str
    sample: int
    nextRun: str | None = None
    lastRun: JobRun | None = None


def run_of(run: Run) -> JobRun:
    return JobRun(
        id=run.id,
        job=run.job,
        type=run.type,
        trigger=run.trigger,
        dryRun=run.dry_run,
        state=run.state,
        requestedBy=run.requested_by,
        fireTime=_iso(run.fire_time),
        retryOf=run.retry_of,
        node=run.node,
        leaseToken=run.token,
        queued=_iso(run.queued),
        started=_iso(run.started),
        ended=_iso(run.ended),
        heartbeat=_iso(run.heartbeat),
        phase=run.phase,
        progress={k: int(v) for k, v in run.progress.items()},
        report=run.report,
        error=run.error,
        interrupted=run.interrupted,
        stopRequested=_iso(run.stop_requested),
        stoppedBy=run.stopped_by,
    )


def job_of(view: JobView) -> Job:
    c = view.config
    return Job(
        name=c.name,
        type=c.type,
        schedule=c.schedule,
        enabled=c.enabled,
        dryRun=c.dry_run,
        policy=c.policy,
        sample=c.sample,
        nextRun=_iso(view.next_run),
        lastRun=run_of(view.last_run) if view.last_run is not None else None,
    )


async def list_jobs(call: Call) -> web.StreamResponse:
    views = await _service(call).list_jobs()
    return json_response([job_of(v).model_dump() for v in views])


async def get_job(call: Call) -> web.StreamResponse:
    return json_response(job_of(await _view(call, call.path("name"))).model_dump())


async def list_runs(call: Call) -> web.StreamResponse:
    text = call.query("limit") or "50"
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise Problem(400, "limit: 1-1000")
    try:
        runs = await _service(call).list_runs(call.path("name"), int(text))
    except JobNotFound as exc:
        raise Problem(404, str(exc)) from None
    return json_response([run_of(r).model_dump() for r in runs])


async def start_run(call: Call) -> web.StreamResponse:
    flag = call.query("dryRun")
    if flag not in (None, "true", "false"):
        raise Problem(400, "dryRun: true or false")
    dry_run = None if flag is None else flag == "true"
    try:
        run = await _service(call).run_now(call.path("name"), dry_run, "manual", call.actor)
    except JobNotFound as exc:
        raise Problem(404, str(exc)) from None
    except JobDisabled as exc:
        raise Problem(409, str(exc)) from None
    location = f"/api/v1/jobs/{run.job}/runs/{run.id}"
    return json_response(run_of(run).model_dump(), 202, {"Location": location})


async def get_run(call: Call) -> web.StreamResponse:
    name, text = call.path("name"), call.path("id")
    run = await _service(call).get_run(int(text)) if text.isdigit() else None
    if run is None or run.job != name:
        raise Problem(404, f"no run {text!r} of job {name!r}")
    return json_response(run_of(run).model_dump())


async def stop_run(call: Call) -> web.StreamResponse:
    """Portway: stop one run. 200 with the run when it ended at once (it was queued), 202
    while the node running it stops it, 409 when it has ended already."""
    name, text = call.path("name"), call.path("id")
    service = _service(call)
    run = await service.get_run(int(text)) if text.isdigit() else None
    if run is None or run.job != name:
        raise Problem(404, f"no run {text!r} of job {name!r}")
    try:
        await service.stop(name, call.actor, _client(call), run.id)
    except NotRunning:
        raise Problem(409, f"run {run.id} of job {name!r} is {run.state}: it has ended") from None
    after = await service.get_run(run.id)
    assert after is not None
    location = f"/api/v1/jobs/{name}/runs/{run.id}"
    status = 202 if after.state == "running" else 200
    return json_response(run_of(after).model_dump(), status, {"Location": location})


_TASK = {200: (TaskXO, False)}
OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/service/rest/v1/tasks",
        list_tasks,
        "List tasks (maintenance jobs)",
        "tasks",
        PRIVILEGE,
        responses={200: (PageTaskXO, False)},
        query=(Param("type", "only tasks of this type: gc, cleanup, upload_purge, fsck"),),
    ),
    Operation(
        "GET",
        "/service/rest/v1/tasks/{id}",
        get_task,
        "One task",
        "tasks",
        PRIVILEGE,
        responses=_TASK,
    ),
    Operation(
        "POST",
        "/service/rest/v1/tasks/{id}/run",
        run_task,
        "Run a task now (405: it is disabled)",
        "tasks",
        PRIVILEGE,
        responses={204: (None, False), 405: (None, False)},
    ),
    Operation(
        "POST",
        "/service/rest/v1/tasks/{id}/stop",
        stop_task,
        "Stop a task's running run (409: it is not running)",
        "tasks",
        PRIVILEGE,
        responses={204: (None, False), 409: (None, False)},
    ),
    Operation(
        "GET",
        "/api/v1/jobs",
        list_jobs,
        "Maintenance jobs, with next and last run",
        "portway",
        PRIVILEGE,
        responses={200: (Job, True)},
    ),
    Operation(
        "GET",
        "/api/v1/jobs/{name}",
        get_job,
        "One maintenance job",
        "portway",
        PRIVILEGE,
        responses={200: (Job, False)},
    ),
    Operation(
        "GET",
        "/api/v1/jobs/{name}/runs",
        list_runs,
        "A job's runs, newest first",
        "portway",
        PRIVILEGE,
        responses={200: (JobRun, True)},
        query=(Param("limit", "1-1000", {"type": "integer", "minimum": 1, "maximum": 1000}),),
    ),
    Operation(
        "POST",
        "/api/v1/jobs/{name}/runs",
        start_run,
        "Run a job now (queued; 409: it is disabled)",
        "portway",
        PRIVILEGE,
        responses={202: (JobRun, False), 409: (None, False)},
        query=(Param("dryRun", "true: report only", {"type": "boolean"}),),
    ),
    Operation(
        "GET",
        "/api/v1/jobs/{name}/runs/{id}",
        get_run,
        "One run: progress and report",
        "portway",
        PRIVILEGE,
        responses={200: (JobRun, False)},
    ),
    Operation(
        "POST",
        "/api/v1/jobs/{name}/runs/{id}/stop",
        stop_run,
        "Stop a run (202: its node stops it; 200: it was queued, cancelled; 409: it ended)",
        "portway",
        PRIVILEGE,
        responses={200: (JobRun, False), 202: (JobRun, False), 409: (None, False)},
    ),
]
