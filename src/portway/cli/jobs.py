"""`portway jobs list|run|show|stop`: maintenance jobs and their runs, from the database.

`run` queues a run that a running `portway serve` node starts (ADR 0027); `--wait` follows
it to its end and prints its report. `show` takes a run id or a job name (its newest run).
`stop` asks a run to stop through the service the admin API's stop calls (jobs.services):
the node running it stops it at its next unit of work; a queued run is cancelled at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portway.jobs.records import Run

if TYPE_CHECKING:
    from portway.jobs.services import JobService


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "jobs",
        help="maintenance jobs (gc, cleanup, upload purge, fsck): schedules, runs, reports",
        description="List the maintenance jobs with their schedules and last runs, run one "
        "now (a running `portway serve` node starts it), or show a run's progress and report.",
    )
    jobs = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    ls = jobs.add_parser("list", help="jobs, schedules (UTC), next run, last run's state")
    run = jobs.add_parser("run", help="run a job now (queued for the servers)")
    run.add_argument("name", help="the job's name (see `portway jobs list`)")
    run.add_argument("--dry-run", action="store_true", help="report only; delete nothing")
    run.add_argument("--wait", action="store_true", help="wait for the end; print the report")
    run.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits")
    show = jobs.add_parser("show", help="one run's progress and report")
    show.add_argument("run", metavar="RUN_ID|NAME", help="a run id, or a job (its newest run)")
    stop = jobs.add_parser("stop", help="stop a running run, or cancel a queued one")
    stop.add_argument(
        "run", metavar="RUN_ID|NAME", help="a run id, or a job (its running and queued runs)"
    )
    stop.add_argument("--wait", action="store_true", help="wait for its end; print the run")
    stop.add_argument("--timeout", type=float, default=600, help="seconds --wait waits")
    for parser in (ls, run, show, stop):
        parser.add_argument("--config", type=Path, help="TOML configuration file")
        parser.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=list_command)
    run.set_defaults(func=run_command)
    show.set_defaults(func=show_command)
    stop.set_defaults(func=stop_command)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def run_json(run: Run) -> dict[str, Any]:
    doc = run.as_dict()
    for key in ("queued", "started", "ended", "heartbeat", "fire_time"):
        doc[key] = _iso(doc[key])
    return doc


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def list_command(args: argparse.Namespace) -> int:
    from portway.compose import Portway
    from portway.config import load_settings

    with Portway(load_settings(args.config)) as root:
        views = asyncio.run(root.job_service.list_jobs())
    if args.json:
        doc = [
            {
                "name": v.name,
                "type": v.config.type,
                "schedule": v.config.schedule,
                "enabled": v.config.enabled,
                "dry_run": v.config.dry_run,
                "next_run": _iso(v.next_run),
                "last_run": run_json(v.last_run) if v.last_run else None,
            }
            for v in views
        ]
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{'NAME':16} {'TYPE':13} {'SCHEDULE (UTC)':16} {'NEXT RUN':21} LAST RUN")
    for v in views:
        last = "-"
        if v.last_run is not None:
            r = v.last_run
            last = f"#{r.id} {r.state} {_when(r.ended or r.started or r.queued)}"
        schedule = v.config.schedule or "(run now only)"
        if not v.config.enabled:
            schedule = "(disabled)"
        print(f"{v.name:16} {v.config.type:13} {schedule:16} {_when(v.next_run):21} {last}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from portway.compose import Portway
    from portway.config import load_settings
    from portway.jobs.services import JobDisabled, JobNotFound

    with Portway(load_settings(args.config)) as root:
        service = root.job_service
        try:
            run = asyncio.run(service.run_now(args.name, args.dry_run or None, "cli", _user()))
        except (JobNotFound, JobDisabled) as exc:
            print(f"portway: {exc}", file=sys.stderr)
            return 2
        if not args.wait:
            if args.json:
                print(json.dumps(run_json(run), indent=2))
            else:
                print(
                    f"run {run.id} of {run.job} queued; a `portway serve` node starts it "
                    f"(follow it with `portway jobs show {run.id}`)"
                )
            return 0
        run = _follow(service, run, args.timeout)
    _print_run(run, args.json)
    if _still(run, args.timeout):
        return 1
    return 0 if run.state == "done" else 1


def _follow(service: JobService, run: Run, timeout: float) -> Run:
    """`run` again once it has ended, or as it is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while run.state in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
        found = asyncio.run(service.get_run(run.id))
        assert found is not None
        run = found
    return run


def _still(run: Run, timeout: float) -> bool:
    """Whether `run` has not ended (said on stderr)."""
    if run.state not in ("queued", "running"):
        return False
    print(f"portway: run {run.id} is still {run.state} after {timeout:g} s", file=sys.stderr)
    return True


def show_command(args: argparse.Namespace) -> int:
    from portway.compose import Portway
    from portway.config import load_settings
    from portway.jobs.services import JobNotFound

    with Portway(load_settings(args.config)) as root:
        service = root.job_service
        run: Run | None
        if args.run.isdigit():
            run = asyncio.run(service.get_run(int(args.run)))
        else:
            try:
                runs = asyncio.run(service.list_runs(args.run, 1))
            except JobNotFound as exc:
                print(f"portway: {exc}", file=sys.stderr)
                return 2
            run = runs[0] if runs else None
    if run is None:
        print(f"portway: no run {args.run!r}", file=sys.stderr)
        return 2
    _print_run(run, args.json)
    return 0


def stop_command(args: argparse.Namespace) -> int:
    """0: the running run was asked to stop, or a queued run cancelled (with --wait: and it
    ended cancelled); 2: no such run or job; 1: it has ended already, or nothing of the job
    is running."""
    from portway.compose import Portway
    from portway.config import load_settings
    from portway.jobs.services import JobNotFound, NotRunning

    with Portway(load_settings(args.config)) as root:
        service = root.job_service
        only: Run | None = None
        if args.run.isdigit():
            only = asyncio.run(service.get_run(int(args.run)))
            if only is None:
                print(f"portway: no run {args.run!r}", file=sys.stderr)
                return 2
        job = args.run if only is None else only.job
        try:
            done = asyncio.run(service.stop(job, _user(), None, None if only is None else only.id))
        except JobNotFound as exc:
            print(f"portway: {exc}", file=sys.stderr)
            return 2
        except NotRunning as exc:
            if only is not None:
                now = asyncio.run(service.get_run(only.id)) or only
                print(f"portway: run {now.id} of {job} is {now.state}: it has ended, "
                      "there is nothing to stop", file=sys.stderr)  # fmt: skip
            else:
                print(f"portway: {exc}", file=sys.stderr)
            return 1
        target = done.running if done.running is not None else done.cancelled[0]
        run = asyncio.run(service.get_run(target))
        assert run is not None
        if args.wait:
            run = _follow(service, run, args.timeout)
    if args.json:
        print(json.dumps(run_json(run), indent=2))
    elif args.wait:
        _print_run(run, False)
    else:
        for cancelled in done.cancelled:
            print(f"run {cancelled} of {job} was queued: cancelled, it will not start")
        if done.running is not None:
            print(
                f"run {done.running} of {job} asked to stop; the node running it stops it at "
                f"its next unit of work (follow it with `portway jobs show {done.running}`)"
            )
    return 1 if args.wait and _still(run, args.timeout) else 0


def _print_run(run: Run, as_json: bool) -> None:
    if as_json:
        print(json.dumps(run_json(run), indent=2))
        return
    print(f"run        {run.id} of {run.job} ({run.type}{', dry run' if run.dry_run else ''})")
    print(f"trigger    {run.trigger}" + (f" by {run.requested_by}" if run.requested_by else ""))
    if run.fire_time is not None:
        print(f"fire time  {_when(run.fire_time)}")
    if run.retry_of is not None:
        print(f"runs again {run.retry_of} (interrupted)")
    print(f"state      {run.state}")
    print(f"node       {run.node or '-'} (lease token {run.token or '-'})")
    print(f"started    {_when(run.started)}   ended {_when(run.ended)}")
    if run.phase:
        counts = ", ".join(f"{k} {v}" for k, v in run.progress.items())
        print(f"progress   {run.phase}" + (f": {counts}" if counts else ""))
    if run.error:
        print(f"error      {run.error}")
    if run.report:
        print(f"report     {run.report.get('summary', '')}")
        for kind, items in (run.report.get("items") or {}).items():
            for item in items:
                shown = item if isinstance(item, str) else " ".join(str(v) for v in item.values())
                print(f"  {kind:11} {shown}")
        if "items_sha256" in run.report:
            print(
                f"set        {run.report['items_sha256']} (equal for a dry run and a run "
                "on an unchanged registry)"
            )


def _user() -> str:
    import getpass

    try:
        return f"{getpass.getuser()} (cli)"
    except Exception:
        return "cli"
