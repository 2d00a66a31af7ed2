"""Maintenance jobs (admin privilege `settings`, as the API's /api/v1/jobs): every job with its
schedule, next and last run and a Run now button (Stop while it runs); one job's runs; one
run's progress (the page reloads itself while the run is queued or running, with a Stop
button) and report. The pages call
`JobService` (jobs/services.py), what the API and `portway jobs` call."""

from __future__ import annotations

import json
from urllib.parse import quote

from aiohttp import web

from portway.jobs.services import JobDisabled, JobNotFound, JobService, NotRunning
from portway.ui.web import Page, Refusal, page

RUNS_SHOWN = 20
ITEMS_SHOWN = 200  # items of each kind a report lists on the page


def _jobs(p: Page) -> JobService:
    p.require_admin("settings")
    if p.services.jobs is None:
        raise Refusal(404, "maintenance jobs are not available here")
    return p.services.jobs


@page
async def jobs(p: Page) -> web.StreamResponse:
    views = await _jobs(p).list_jobs()
    return p.render("admin_jobs.html", views=views, error=None)


@page
async def job(p: Page) -> web.StreamResponse:
    service = _jobs(p)
    name = p.request.match_info["name"]
    try:
        view = await service.get_job(name)
        runs = await service.list_runs(name, RUNS_SHOWN)
    except JobNotFound as exc:
        raise Refusal(404, str(exc)) from None
    return p.render("admin_job.html", view=view, runs=runs)


@page
async def run_now(p: Page) -> web.StreamResponse:
    service = _jobs(p)
    name = p.request.match_info["name"]
    form = await p.form()
    dry = {"dry": True, "real": False}.get(form.get("mode", ""))
    try:
        run = await service.run_now(name, dry, "manual", p.user)
    except JobNotFound as exc:
        raise Refusal(404, str(exc)) from None
    except JobDisabled as exc:
        raise Refusal(409, str(exc)) from None
    raise web.HTTPSeeOther(f"/ui/admin/jobs/{quote(name)}/runs/{run.id}")


@page
async def stop(p: Page) -> web.StreamResponse:
    """Stop the job's running run (and its queued ones), or only the run the form names;
    back to that run's page, which follows it until it ends."""
    from portway.http.forwarded import client_address

    service = _jobs(p)
    name = p.request.match_info["name"]
    form = await p.form()
    only = int(form["run"]) if form.get("run", "").isdigit() else None
    client = client_address(p.request, p.ctx.trusted)
    try:
        done = await service.stop(name, p.user or "anonymous", client, only)
    except JobNotFound as exc:
        raise Refusal(404, str(exc)) from None
    except NotRunning as exc:
        raise Refusal(409, str(exc)) from None
    shown = only or done.running or done.cancelled[0]
    raise web.HTTPSeeOther(f"/ui/admin/jobs/{quote(name)}/runs/{shown}")


def _label(item: object) -> str:
    """A report item as the CLI prints it: repository/image:tag, repository/image@digest."""
    if isinstance(item, dict):
        where = f"{item.get('repository', '')}/{item.get('image', '')}"
        if "tag" in item:
            return f"{where}:{item['tag']}"
        if "digest" in item and "image" in item:
            return f"{where}@{item['digest']}"
        return json.dumps(item, sort_keys=True)
    return str(item)


@page
async def run(p: Page) -> web.StreamResponse:
    service = _jobs(p)
    try:
        run_id = int(p.request.match_info["run"])
    except ValueError:
        raise Refusal(404, "no such run") from None
    found = await service.get_run(run_id)
    if found is None or found.job != p.request.match_info["name"]:
        raise Refusal(404, f"no run {run_id} of this job")
    report = found.report or {}
    items = report.get("items") if isinstance(report.get("items"), dict) else {}
    lists = {
        k: [_label(i) for i in v[:ITEMS_SHOWN]]
        for k, v in (items or {}).items()
        if isinstance(v, list)
    }
    totals = {k: len(v) for k, v in (items or {}).items() if isinstance(v, list)}
    rest = {k: v for k, v in report.items() if k not in ("items", "summary")}
    return p.render("admin_run.html", run=found, summary=report.get("summary"), lists=lists,
                    totals=totals, shown=ITEMS_SHOWN,
                    rest=json.dumps(rest, indent=2, sort_keys=True, default=str),
                    live=found.state in ("queued", "running"))  # fmt: skip
