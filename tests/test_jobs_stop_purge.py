"""Stopping an upload purge mid-way on a real `portway serve` (SQLite, security on, 2 workers).

The purge looks for a stop before each hosted repository and purges one repository's stale
sessions per turn. Here three repositories hold three upload sessions each. The sessions are
aged by hand: their rows and data files are made an hour old, past a 60 s
`upload_session_ttl`. The test-only pause (`PORTWAY_JOB_PHASE_DELAY`) comes before each
repository, so a stop lands after the first one. Afterwards each repository keeps all its
sessions or none, the report says the run was stopped, and the next run purges the rest."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator

import pytest
import requests

from admin_api_support import NEXUS, admin_session
from jobs_support import JobsServer, run_now, serve_jobs, wait_run
from support.cluster import token
from test_jobs_stop import wait_for

DELAY = 3.0  # the pause at each phase and before each repository
REPOS = ["team-a", "team-b", "team-c"]
SESSIONS = 3  # per repository
JOBS = {
    "jobs": {"lease_ttl": 6, "poll_interval": 1},
    "job": [{"name": "slow-purge", "type": "upload_purge"}],  # run now only
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsServer]:
    yield from serve_jobs(
        tmp_path_factory.mktemp("jobs-stop-purge"), JOBS,
        repositories=[{"name": r, "type": "hosted", "path_routing": True} for r in REPOS],
        server={"upload_session_ttl": 60},
        env={"PORTWAY_JOB_PHASE_DELAY": str(DELAY)},
    )  # fmt: skip


def start_sessions(server: JobsServer) -> None:
    auth = ("admin", server.admin_password() or "")
    for repo in REPOS:  # a token is for one repository
        session = requests.Session()
        session.headers["Authorization"] = "Bearer " + token(
            server.url, auth, [f"repository:{repo}/app:pull,push"]
        )
        for n in range(SESSIONS):
            started = session.post(f"{server.url}/v2/{repo}/app/blobs/uploads/", timeout=60)
            assert started.status_code == 202, started.text
            sent = session.patch(
                server.url + started.headers["Location"], data=b"part %d" % n, timeout=60,
                headers={"Content-Type": "application/octet-stream"},
            )  # fmt: skip
            assert sent.status_code == 202, sent.text


def age_sessions(server: JobsServer) -> None:
    """Every session row and data file an hour old: stale for the purge."""
    hour_ago = time.time() - 3600
    with sqlite3.connect(server.data_dir / "portway.db") as db:
        db.execute("UPDATE uploads SET created = ?, updated = ?", (hour_ago, hour_ago))
    for path in (server.data_dir / "storage" / "uploads").rglob("*"):
        os.utime(path, (hour_ago, hour_ago))


def sessions_by_repository(server: JobsServer) -> dict[str, int]:
    with sqlite3.connect(server.data_dir / "portway.db") as db:
        rows = db.execute(
            "SELECT r.name, count(u.id) FROM repositories r "
            "LEFT JOIN uploads u ON u.repo_id = r.id GROUP BY r.name"
        ).fetchall()
    return {name: count for name, count in rows if name in REPOS}


def test_an_upload_purge_stopped_mid_way_purged_whole_repositories(server: JobsServer) -> None:
    admin = admin_session(server)
    start_sessions(server)
    age_sessions(server)
    assert sessions_by_repository(server) == dict.fromkeys(REPOS, SESSIONS)

    queued = run_now(admin, server.url, "slow-purge", dry_run=False)
    wait_for(admin, server.url, "slow-purge", queued["id"], lambda r: r["phase"] == "purging")
    # Phase pause, the pause before the first repository, its sessions purged, then the pause
    # before the second: the stop arrives in that one.
    time.sleep(2 * DELAY + DELAY / 2)
    stop = admin.post(f"{server.url}{NEXUS}/tasks/slow-purge/stop", timeout=30)
    assert stop.status_code == 204, stop.text
    ended = wait_run(admin, server.url, "slow-purge", queued["id"], timeout=60)
    assert ended["state"] == "cancelled" and ended["stoppedBy"] == "admin", ended
    report = ended["report"]
    assert report["stopped"], report
    purged = report["counts"]["uploads"]
    left = sessions_by_repository(server)
    assert sorted(left.values()) in ([0] + [SESSIONS] * 2, [0, 0, SESSIONS]), left  # whole
    assert purged == SESSIONS * list(left.values()).count(0), (report, left)
    assert 0 < purged < SESSIONS * len(REPOS), report

    again = run_now(admin, server.url, "slow-purge", dry_run=False)
    done = wait_run(admin, server.url, "slow-purge", again["id"], timeout=90)
    assert done["state"] == "done", done
    assert done["report"]["counts"]["uploads"] == SESSIONS * len(REPOS) - purged, done
    assert sessions_by_repository(server) == dict.fromkeys(REPOS, 0)
