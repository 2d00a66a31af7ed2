"""Stopping an fsck run mid-way on a real `portway serve` (SQLite, security on, 2 workers).

fsck hashes blobs in units of 100 and looks for a stop between two units. With 250 blobs
and the test-only pause (`PORTWAY_JOB_PHASE_DELAY`) before each unit, a stop sent to the
worker not running the run lands after the first unit: the run ends `cancelled` with the
blobs hashed so far (a whole number of units, fewer than all), reports no problem in them,
is not run again, and the next run hashes every blob and finds the registry clean."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from admin_api_support import NEXUS, admin_session
from jobs_support import JobsServer, push_orphans, run_now, serve_jobs, wait_run
from test_jobs_stop import post_on_other_worker, wait_for

DELAY = 3.0  # the pause at each phase and before each unit of 100 blobs
BLOBS = 250
JOBS = {
    "jobs": {"lease_ttl": 6, "poll_interval": 1},
    "job": [{"name": "full-fsck", "type": "fsck", "sample": 0}],  # every blob, run now only
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsServer]:
    yield from serve_jobs(
        tmp_path_factory.mktemp("jobs-stop-fsck"), JOBS,
        env={"PORTWAY_JOB_PHASE_DELAY": str(DELAY)},
    )


def test_an_fsck_stopped_mid_way_reports_what_it_hashed_and_the_next_run_checks_all(
    server: JobsServer,
) -> None:
    admin: requests.Session = admin_session(server)
    push_orphans(server.url, ("admin", server.admin_password() or ""), BLOBS, size=256)
    queued = run_now(admin, server.url, "full-fsck")
    run = wait_for(
        admin, server.url, "full-fsck", queued["id"], lambda r: r["phase"] == "checking"
    )
    # Phase pause (3 s), the pause before the first unit (3 s), 100 blobs hashed, then the
    # pause before the second unit: the stop arrives in that one.
    time.sleep(2 * DELAY + DELAY / 2)
    runner = int(run["node"].split(":")[1])
    worker, status, body = post_on_other_worker(server, runner, f"{NEXUS}/tasks/full-fsck/stop")
    assert (status, body) == (204, b"") and worker != runner

    ended = wait_run(admin, server.url, "full-fsck", queued["id"], timeout=60)
    assert ended["state"] == "cancelled" and ended["stoppedBy"] == "admin", ended
    report = ended["report"]
    assert report["stopped"] and report["summary"].startswith("stopped by admin"), report
    checked = report["counts"]["checked"]
    assert 0 < checked < BLOBS and checked % 100 == 0, report  # whole units only
    assert report["clean"] and not report["items"], report  # what it hashed is sound

    time.sleep(2.5)  # both workers polled: the stopped run is not run again
    runs = admin.get(f"{server.url}/api/v1/jobs/full-fsck/runs").json()
    assert [r["id"] for r in runs] == [queued["id"]], runs

    again = wait_run(admin, server.url, "full-fsck", run_now(admin, server.url, "full-fsck")["id"])
    assert again["state"] == "done" and not again["report"]["stopped"], again
    assert again["report"]["counts"]["checked"] == BLOBS and again["report"]["clean"]
