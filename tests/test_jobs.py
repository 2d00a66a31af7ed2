"""Maintenance jobs on a real `portway serve` (SQLite, security on, 2 workers): run now through
the admin API (Portway's and Nexus's) and the CLI, a dry run that lists exactly what the
real run deletes, who may do it, and a scheduled job that fires once per fire time (not once
per worker) and records its report."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
import requests

from admin_api_support import NEXUS, VIEWER, add_viewer, admin_session
from jobs_support import IMAGE, JobsServer, blob_status, push_orphans, run_now, serve_jobs, wait_run

JOBS = {
    "jobs": {"lease_ttl": 6, "poll_interval": 1},
    "job": [
        # Every 10 s (a leading second field), reporting only: the API tests' garbage stays
        # until they collect it.
        {"name": "sweep", "type": "gc", "schedule": "*/10 * * * * *", "dry_run": True},
        {"name": "check", "type": "fsck", "enabled": False},
    ],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsServer]:
    yield from serve_jobs(
        tmp_path_factory.mktemp("jobs"), JOBS,
        server={"gc_hold": 1},
    )


@pytest.fixture(scope="module")
def admin(server: JobsServer) -> requests.Session:
    session = admin_session(server)
    add_viewer(server, session)
    return session


def cli(server: JobsServer, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "portway", "jobs", *args, "--config", str(server.config_path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


def stored(server: JobsServer, digest: str) -> bool:
    hex_ = digest.removeprefix("sha256:")
    return (server.data_dir / "storage" / "blobs" / "sha256" / hex_[:2] / hex_).exists()


def test_only_admins_see_and_run_jobs(server: JobsServer, admin: requests.Session) -> None:
    for method, path in (
        ("GET", "/api/v1/jobs"),
        ("GET", "/api/v1/jobs/gc/runs"),
        ("POST", "/api/v1/jobs/gc/runs"),
        ("GET", f"{NEXUS}/tasks"),
        ("POST", f"{NEXUS}/tasks/gc/run"),
    ):
        anonymous = requests.request(method, server.url + path, timeout=30)
        assert anonymous.status_code == 401, path
        viewer = requests.request(method, server.url + path, auth=VIEWER, timeout=30)
        assert viewer.status_code == 403, path
    assert admin.get(f"{server.url}/api/v1/jobs").status_code == 200
    # Nothing was queued by the refused requests.
    runs = admin.get(f"{server.url}/api/v1/jobs/gc/runs").json()
    assert all(r["requestedBy"] == "admin" for r in runs)


def test_dry_run_lists_exactly_what_the_run_deletes(
    server: JobsServer, admin: requests.Session
) -> None:
    auth = ("admin", server.admin_password() or "")
    garbage = push_orphans(server.url, auth, 6)
    time.sleep(2.5)  # gc_hold (1 s) and its margin have passed
    dry = wait_run(admin, server.url, "gc", run_now(admin, server.url, "gc", dry_run=True)["id"])
    assert dry["state"] == "done" and dry["dryRun"] and dry["trigger"] == "manual"
    listed = {b["digest"] for b in dry["report"]["items"]["blobs"]}
    assert set(garbage) <= listed
    # Nothing deleted (looked at on disk: a blob HEAD would hold the blob for gc_hold).
    assert all(stored(server, d) for d in garbage)
    real = wait_run(admin, server.url, "gc", run_now(admin, server.url, "gc", dry_run=False)["id"])
    assert real["state"] == "done" and not real["dryRun"], real
    assert real["report"]["items"] == dry["report"]["items"]
    assert real["report"]["items_sha256"] == dry["report"]["items_sha256"]
    assert real["report"]["bytes_freed"] == dry["report"]["bytes_freed"] >= 6 * 2048
    assert not any(stored(server, d) for d in garbage)
    assert all(blob_status(server.url, auth, d) == 404 for d in garbage)
    assert real["phase"] == "deleting" and real["progress"]["blobs"] >= 6
    assert real["node"] and real["leaseToken"] and real["ended"] >= real["started"]
    # Each run records its own lease token, and tokens only grow.
    assert real["leaseToken"] > dry["leaseToken"]


def test_nexus_tasks(server: JobsServer, admin: requests.Session) -> None:
    page = admin.get(f"{server.url}{NEXUS}/tasks").json()
    tasks = {t["id"]: t for t in page["items"]}
    assert {"gc", "cleanup", "upload-purge", "fsck", "sweep", "check"} <= set(tasks)
    assert page["continuationToken"] is None
    assert tasks["upload-purge"]["type"] == "upload_purge"
    assert tasks["upload-purge"]["currentState"] == "WAITING"
    assert tasks["upload-purge"]["nextRun"].endswith(":00:00+00:00")  # hourly
    assert tasks["check"]["currentState"] == "DONE" and tasks["check"]["nextRun"] is None
    only = admin.get(f"{server.url}{NEXUS}/tasks", params={"type": "fsck"}).json()["items"]
    assert {t["id"] for t in only} == {"fsck", "check"}
    assert admin.get(f"{server.url}{NEXUS}/tasks/nope").status_code == 404
    assert admin.post(f"{server.url}{NEXUS}/tasks/nope/run").status_code == 404
    assert admin.post(f"{server.url}{NEXUS}/tasks/check/run").status_code == 405
    assert admin.post(f"{server.url}/api/v1/jobs/check/runs").status_code == 409
    ran = admin.post(f"{server.url}{NEXUS}/tasks/upload-purge/run")
    assert ran.status_code == 204 and ran.content == b""
    newest = admin.get(f"{server.url}/api/v1/jobs/upload-purge/runs", params={"limit": 1}).json()
    done = wait_run(admin, server.url, "upload-purge", newest[0]["id"])
    assert done["state"] == "done" and done["requestedBy"] == "admin"
    assert "upload session(s)" in done["report"]["summary"]
    task = admin.get(f"{server.url}{NEXUS}/tasks/upload-purge").json()
    assert task["lastRunResult"] == "OK" and task["message"] == done["report"]["summary"]


def test_cli_runs_lists_and_shows(server: JobsServer, admin: requests.Session) -> None:
    ran = cli(server, "run", "gc", "--dry-run", "--wait")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "state      done" in ran.stdout and "gc: would delete" in ran.stdout
    run_id = ran.stdout.split()[1]
    shown = cli(server, "show", run_id, "--json")
    record = json.loads(shown.stdout)
    assert record["trigger"] == "cli" and record["dry_run"] and record["state"] == "done"
    api = admin.get(f"{server.url}/api/v1/jobs/gc/runs/{run_id}").json()
    assert api["report"] == record["report"] and api["trigger"] == "cli"
    listed = cli(server, "list")
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.startswith("sweep "))
    assert "* * * * *" in line
    assert cli(server, "run", "nope").returncode == 2
    assert "disabled" in cli(server, "run", "check").stderr
    assert admin.get(f"{server.url}/api/v1/jobs/gc/runs/{run_id}x").status_code == 404
    assert admin.get(f"{server.url}/api/v1/jobs/sweep/runs/{run_id}").status_code == 404


def test_a_scheduled_job_fires_once_per_fire_time(
    server: JobsServer, admin: requests.Session
) -> None:
    deadline = time.monotonic() + 60  # every 10 s: soon after the start
    while True:
        runs = admin.get(f"{server.url}/api/v1/jobs/sweep/runs").json()
        scheduled = [r for r in runs if r["trigger"] == "schedule" and r["state"] == "done"]
        if scheduled:
            break
        assert time.monotonic() < deadline, runs
        time.sleep(1)
    time.sleep(3)  # both workers polled again (poll_interval 1 s) after the run
    runs = admin.get(f"{server.url}/api/v1/jobs/sweep/runs").json()
    first = scheduled[-1]
    same = [r for r in runs if r["fireTime"] == first["fireTime"]]
    assert len(same) == 1, same  # one run for the fire time, not one per worker
    assert datetime.fromisoformat(first["fireTime"]).second % 10 == 0  # a fire time
    assert first["started"] >= first["fireTime"]
    assert first["dryRun"] and first["report"]["summary"].startswith("gc: would delete")
    job = admin.get(f"{server.url}/api/v1/jobs/sweep").json()
    assert job["schedule"] == "*/10 * * * * *" and job["nextRun"] > first["fireTime"]


def test_the_upload_purge_job_removes_an_abandoned_upload(
    server: JobsServer, admin: requests.Session
) -> None:
    """The purge is a job now (no longer every worker's janitor): an upload session idle for
    longer than upload_session_ttl (24 h) goes at its run, and its URL answers 404."""
    import os
    import sqlite3

    from support.cluster import token

    auth = ("admin", server.admin_password() or "")
    bearer = {
        "Authorization": f"Bearer {token(server.url, auth, [f'repository:{IMAGE}:pull,push'])}"
    }
    started = requests.post(f"{server.url}/v2/{IMAGE}/blobs/uploads/", headers=bearer, timeout=30)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    upload_id = started.headers["Docker-Upload-UUID"]
    two_days_ago = time.time() - 2 * 86400
    os.utime(server.data_dir / "storage" / "uploads" / upload_id, (two_days_ago, two_days_ago))
    with sqlite3.connect(server.data_dir / "portway.db") as db:  # the session row as old
        db.execute(
            "UPDATE uploads SET created = ?, updated = ? WHERE id = ?",
            (two_days_ago, two_days_ago, upload_id),
        )
    dry = wait_run(
        admin,
        server.url,
        "upload-purge",
        run_now(admin, server.url, "upload-purge", dry_run=True)["id"],
    )
    assert dry["report"]["counts"]["uploads"] == 1, dry
    url = location if location.startswith("http") else server.url + location
    assert requests.get(url, headers=bearer, timeout=30).status_code == 204  # still there
    real = wait_run(
        admin,
        server.url,
        "upload-purge",
        run_now(admin, server.url, "upload-purge", dry_run=False)["id"],
    )
    assert real["state"] == "done" and real["report"]["counts"]["uploads"] == 1, real
    assert requests.get(url, headers=bearer, timeout=30).status_code == 404


def test_a_gc_run_is_counted_exactly_in_metrics(
    server: JobsServer, admin: requests.Session
) -> None:
    """/metrics adds exactly what one gc run deleted, whichever worker ran it; a dry run
    counts as a run and adds no results."""
    from metrics_support import key, scrape, settle, value

    auth = ("admin", server.admin_password() or "")
    time.sleep(1.5)  # anything left by earlier tests is past gc_hold: this run takes it
    cleared = wait_run(admin, server.url, "gc", run_now(admin, server.url, "gc", False)["id"])
    assert cleared["state"] == "done", cleared
    garbage = push_orphans(server.url, auth, 5, size=3000)
    time.sleep(2.5)  # past gc_hold (1 s) and its margin
    runs = {"job": "gc", "state": "done"}
    before = scrape(server.url)  # the clearing run is in: workers flush every second
    names = ("portway_gc_deleted_blobs_total", "portway_gc_freed_bytes_total",
             "portway_gc_deleted_blob_links_total", "portway_gc_deleted_manifests_total",
             "portway_job_run_duration_seconds_count")  # fmt: skip
    base = {name: value(before, name, job="gc") for name in names}
    real = wait_run(admin, server.url, "gc", run_now(admin, server.url, "gc", False)["id"])
    assert real["state"] == "done", real
    counts = real["report"]["counts"]
    assert counts["blobs"] == 5 and real["report"]["bytes_freed"] == 5 * 3000, real["report"]
    assert {b["digest"] for b in real["report"]["items"]["blobs"]} == set(garbage)
    after = settle(server.url, {
        key("portway_job_runs_total", **runs): value(before, "portway_job_runs_total", **runs) + 1,
        key("portway_gc_deleted_blobs_total", job="gc"): base[names[0]] + 5,
        key("portway_gc_freed_bytes_total", job="gc"): base[names[1]] + 15000,
        key("portway_gc_deleted_blob_links_total", job="gc"): base[names[2]] + 5,
        key("portway_gc_deleted_manifests_total", job="gc"): base[names[3]],
        key("portway_job_run_duration_seconds_count", job="gc"): base[names[4]] + 1,
    })  # fmt: skip
    ended = datetime.fromisoformat(real["ended"]).timestamp()
    success = value(after, "portway_job_last_success_timestamp_seconds", job="gc")
    assert abs(success - ended) < 2, (success, ended)  # within clock and rounding
    assert value(after, "portway_job_runs_total", job="gc", state="failed") == value(
        before, "portway_job_runs_total", job="gc", state="failed")  # fmt: skip

    # A dry run with garbage to report: one more run, no results.
    push_orphans(server.url, auth, 2, size=1000)
    time.sleep(2.5)
    dry = wait_run(admin, server.url, "gc", run_now(admin, server.url, "gc", True)["id"])
    assert dry["state"] == "done" and dry["report"]["counts"]["blobs"] == 2, dry
    settle(server.url, {
        key("portway_job_runs_total", **runs): value(after, "portway_job_runs_total", **runs) + 1,
        key("portway_gc_deleted_blobs_total", job="gc"): base[names[0]] + 5,
        key("portway_gc_freed_bytes_total", job="gc"): base[names[1]] + 15000,
    })  # fmt: skip
