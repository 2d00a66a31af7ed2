"""Stopping a maintenance job on a real `portway serve` (SQLite, security on, 2 workers):
Nexus's `POST /service/rest/v1/tasks/{id}/stop` and Portway's per-run stop.

A GC of 350 orphan blobs deletes its links in two batches (300, then 50). The test-only knob
`PORTWAY_JOB_PHASE_DELAY` pauses the run at each phase and before each batch, so the stop
surely lands after the first batch: it is sent on a connection the *other* worker accepted
(found through /proc), the run ends `cancelled` with 300 links deleted and every blob still
stored, is not run again, and the next run finishes the rest with fsck clean afterwards."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from base64 import b64encode
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from admin_api_support import NEXUS, VIEWER, add_viewer, admin_session
from drain_support import holder_of
from jobs_support import JobsServer, blob_status, push_orphans, run_now, serve_jobs, wait_run

DELAY = 3.0  # seconds the run pauses at each phase and before each batch
JOBS = {
    "jobs": {"lease_ttl": 6, "poll_interval": 1},
    "job": [{"name": "slow-gc", "type": "gc"}],  # run now only
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsServer]:
    yield from serve_jobs(
        tmp_path_factory.mktemp("jobs-stop"), JOBS,
        server={"gc_hold": 1},
        env={"PORTWAY_JOB_PHASE_DELAY": str(DELAY)},
    )


@pytest.fixture(scope="module")
def admin(server: JobsServer) -> requests.Session:
    session = admin_session(server)
    add_viewer(server, session)
    return session


def stored(server: JobsServer, digest: str) -> bool:
    hex_ = digest.removeprefix("sha256:")
    return (server.data_dir / "storage" / "blobs" / "sha256" / hex_[:2] / hex_).exists()


def workers(server: JobsServer) -> list[int]:
    pids = sorted({int(p) for p in re.findall(r"worker (\d+) listening on", server.log())})
    assert len(pids) == 2, server.log()[-2000:]
    return pids


def post_on_other_worker(
    server: JobsServer, avoid: int, path: str
) -> tuple[int, int, bytes]:
    """POST `path` (as admin) on a kept-alive connection that a worker other than `avoid`
    accepted. Returns (that worker's pid, status, body)."""
    auth = b64encode(f"admin:{server.admin_password()}".encode()).decode()
    headers = {"Authorization": f"Basic {auth}"}
    pids = workers(server)
    assert avoid in pids, (avoid, pids)
    for _ in range(100):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("GET", "/api/openapi.json")  # accepted by one worker or the other
            conn.getresponse().read()
            assert conn.sock is not None
            worker = holder_of(pids, server.port, int(conn.sock.getsockname()[1]))
            if worker is not None and worker != avoid:
                conn.request("POST", path, headers=headers)
                answer = conn.getresponse()
                return worker, answer.status, answer.read()
        finally:
            conn.close()
    raise AssertionError(f"no connection reached a worker other than {avoid}")


def wait_for(
    session: requests.Session, base: str, job: str, run_id: int, ready: Any, timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = session.get(f"{base}/api/v1/jobs/{job}/runs/{run_id}").json()
        if ready(run):
            return run
        assert run["state"] in ("queued", "running"), run
        assert time.monotonic() < deadline, run
        time.sleep(0.1)


def test_a_running_gc_stopped_from_the_other_worker_stops_between_batches(
    server: JobsServer, admin: requests.Session
) -> None:
    auth = ("admin", server.admin_password() or "")
    garbage = push_orphans(server.url, auth, 350, size=256)
    time.sleep(2.5)  # past gc_hold (1 s) and its margin
    queued = run_now(admin, server.url, "slow-gc", dry_run=False)
    # The checkpoint before the second batch of links records the first one's 300.
    run = wait_for(
        admin,
        server.url,
        "slow-gc",
        queued["id"],
        lambda r: r["progress"].get("deleted_blob_links", 0) >= 300,
    )
    assert run["state"] == "running" and run["phase"] == "deleting", run
    runner = int(run["node"].split(":")[1])
    worker, status, body = post_on_other_worker(server, runner, f"{NEXUS}/tasks/slow-gc/stop")
    assert (status, body) == (204, b""), body
    assert worker != runner

    ended = wait_run(admin, server.url, "slow-gc", queued["id"], timeout=60)
    assert ended["state"] == "cancelled" and not ended["interrupted"], ended
    assert ended["stoppedBy"] == "admin" and ended["stopRequested"], ended
    assert ended["node"] == run["node"] and ended["error"] is None
    report = ended["report"]
    assert report["stopped"] and report["stopped_by"] == "admin", report
    assert report["summary"].startswith("stopped by admin before it finished"), report
    # It did not finish: the second batch of links and every blob were left.
    assert report["counts"]["blob_links"] == 300 and report["counts"]["blobs"] == 0, report
    assert all(stored(server, d) for d in garbage)
    task = admin.get(f"{server.url}{NEXUS}/tasks/slow-gc").json()
    assert task["lastRunResult"] == "CANCELED" and "stopped by admin" in task["message"]
    assert task["currentState"] != "RUNNING"
    audit = admin.get(f"{server.url}/api/v1/audit", params={"event": "job.stop"}).json()
    records = [r for r in audit["items"] if r["detail"].get("run") == queued["id"]]
    assert len(records) == 1 and records[0]["principal"] == "admin", audit
    assert records[0]["detail"]["job"] == "slow-gc"

    time.sleep(2.5)  # both workers polled (poll_interval 1 s): a stopped run is not run again
    runs = admin.get(f"{server.url}/api/v1/jobs/slow-gc/runs").json()
    assert not [r for r in runs if r["retryOf"] == queued["id"]], runs
    assert runs[0]["id"] == queued["id"]

    # The registry is consistent: the next run deletes the rest, and fsck finds nothing.
    again = wait_run(admin, server.url, "slow-gc", run_now(admin, server.url, "slow-gc")["id"])
    assert again["state"] == "done", again
    assert again["report"]["counts"]["blob_links"] == 50, again["report"]
    assert again["report"]["counts"]["blobs"] == 350, again["report"]
    assert not any(stored(server, d) for d in garbage)
    assert all(blob_status(server.url, auth, d) == 404 for d in garbage[:5])
    check = wait_run(admin, server.url, "fsck", run_now(admin, server.url, "fsck")["id"])
    assert check["state"] == "done" and check["report"]["clean"], check["report"]


def test_stop_of_a_queued_run_and_portways_per_run_stop(
    server: JobsServer, admin: requests.Session
) -> None:
    """While one run runs, a second waits queued: stopping the second cancels it at once
    (200, it never starts); stopping the first answers 202 and it ends cancelled."""
    first = run_now(admin, server.url, "slow-gc", dry_run=True)
    wait_for(admin, server.url, "slow-gc", first["id"], lambda r: r["state"] == "running")
    second = run_now(admin, server.url, "slow-gc", dry_run=True)
    assert second["state"] == "queued"
    base = f"{server.url}/api/v1/jobs/slow-gc/runs"
    answer = admin.post(f"{base}/{second['id']}/stop")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Location"] == f"/api/v1/jobs/slow-gc/runs/{second['id']}"
    cancelled = answer.json()
    assert cancelled["state"] == "cancelled" and cancelled["started"] is None, cancelled
    assert cancelled["error"] == "stopped by admin before it started"
    answer = admin.post(f"{base}/{first['id']}/stop")
    assert answer.status_code == 202, answer.text
    assert answer.json()["state"] == "running" and answer.json()["stoppedBy"] == "admin"
    ended = wait_run(admin, server.url, "slow-gc", first["id"], timeout=60)
    assert ended["state"] == "cancelled" and ended["report"]["stopped"], ended
    never = admin.get(f"{base}/{second['id']}").json()
    assert never["state"] == "cancelled" and never["started"] is None, never
    # Ended runs cannot be stopped again.
    again = admin.post(f"{base}/{first['id']}/stop")
    assert again.status_code == 409 and "has ended" in again.json()["detail"]


def test_stop_answers_404_409_and_refuses_non_admins(
    server: JobsServer, admin: requests.Session
) -> None:
    assert admin.post(f"{server.url}{NEXUS}/tasks/nope/stop").status_code == 404
    assert admin.post(f"{server.url}/api/v1/jobs/slow-gc/runs/999999/stop").status_code == 404
    assert admin.post(f"{server.url}/api/v1/jobs/nope/runs/1/stop").status_code == 404
    idle = admin.post(f"{server.url}{NEXUS}/tasks/upload-purge/stop")
    assert idle.status_code == 409, idle.text
    assert idle.headers["Content-Type"].startswith("application/problem+json")
    assert "is not running" in idle.json()["detail"]
    for path in (f"{NEXUS}/tasks/slow-gc/stop", "/api/v1/jobs/slow-gc/runs/1/stop"):
        anonymous = requests.post(server.url + path, timeout=30)
        assert anonymous.status_code == 401, path
        viewer = requests.post(server.url + path, auth=VIEWER, timeout=30)
        assert viewer.status_code == 403, path
    audit = admin.get(f"{server.url}/api/v1/audit", params={"event": "job.stop"}).json()
    assert all(r["principal"] == "admin" for r in audit["items"])


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def test_the_jobs_page_stops_a_running_job(server: JobsServer, admin: requests.Session) -> None:
    """The web UI: a Stop button next to a running job; it stops it as the API does."""
    ui = requests.Session()
    form = ui.get(f"{server.url}/ui/login", timeout=30)
    login = {"username": "admin", "password": server.admin_password(), "csrf": _csrf(form.text)}
    signed = ui.post(f"{server.url}/ui/login", data=login, timeout=30, allow_redirects=False)
    assert signed.status_code == 303, signed.text
    idle = ui.get(f"{server.url}/ui/admin/jobs", timeout=30).text
    assert 'action="/ui/admin/jobs/slow-gc/stop"' not in idle  # nothing runs: no Stop
    queued = run_now(admin, server.url, "slow-gc", dry_run=True)
    wait_for(admin, server.url, "slow-gc", queued["id"], lambda r: r["state"] == "running")
    page = ui.get(f"{server.url}/ui/admin/jobs", timeout=30).text
    assert 'action="/ui/admin/jobs/slow-gc/stop"' in page and 'aria-label="Stop slow-gc"' in page
    stopped = ui.post(f"{server.url}/ui/admin/jobs/slow-gc/stop", data={"csrf": _csrf(page)},
                      timeout=30, allow_redirects=False)  # fmt: skip
    assert stopped.status_code == 303, stopped.text
    assert stopped.headers["Location"] == f"/ui/admin/jobs/slow-gc/runs/{queued['id']}"
    ended = wait_run(admin, server.url, "slow-gc", queued["id"], timeout=60)
    assert ended["state"] == "cancelled" and ended["stoppedBy"] == "admin", ended
    shown = ui.get(f"{server.url}{stopped.headers['Location']}", timeout=30).text
    assert "Run {}: cancelled".format(queued["id"]) in shown and "stopped by admin" in shown
    # Without the form's token nothing is stopped; with nothing running, 409.
    assert ui.post(f"{server.url}/ui/admin/jobs/slow-gc/stop", timeout=30).status_code == 403
    again = ui.post(f"{server.url}/ui/admin/jobs/slow-gc/stop", data={"csrf": _csrf(page)},
                    timeout=30, allow_redirects=False)  # fmt: skip
    assert again.status_code == 409


def cli(server: JobsServer, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "portway", "jobs", *args, "--config", str(server.config_path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


def test_portway_jobs_stop_cancels_a_queued_run_and_stops_a_running_one(
    server: JobsServer, admin: requests.Session
) -> None:
    """`portway jobs stop` from a shell on the node: the service the API calls, so the run
    ends as it does when stopped over HTTP, stopped by the operator's login name (cli)."""
    for arg, code, said in (
        ("999999", 2, "no run '999999'"),
        ("nope", 2, "no job named 'nope'"),
        ("slow-gc", 1, "job 'slow-gc' is not running: there is no run of it to stop"),
    ):
        done = cli(server, "stop", arg)
        assert (done.returncode, done.stdout) == (code, ""), done
        assert done.stderr == f"portway: {said}\n", done.stderr

    first = run_now(admin, server.url, "slow-gc", dry_run=True)
    wait_for(admin, server.url, "slow-gc", first["id"], lambda r: r["state"] == "running")
    second = run_now(admin, server.url, "slow-gc", dry_run=True)
    done = cli(server, "stop", str(second["id"]))
    assert done.returncode == 0, done
    assert done.stdout.strip() == (
        f"run {second['id']} of slow-gc was queued: cancelled, it will not start"
    ), done.stdout
    never = admin.get(f"{server.url}/api/v1/jobs/slow-gc/runs/{second['id']}").json()
    assert never["state"] == "cancelled" and never["started"] is None, never
    by = never["stoppedBy"]
    assert by.endswith("(cli)") and never["error"] == f"stopped by {by} before it started"
    assert admin.get(f"{server.url}/api/v1/jobs/slow-gc/runs/{first['id']}").json()[
        "state"
    ] == "running"  # fmt: skip

    done = cli(server, "stop", str(first["id"]), "--wait", "--json", "--timeout", "60")
    assert done.returncode == 0, done
    ended = json.loads(done.stdout)
    assert ended["id"] == first["id"] and ended["state"] == "cancelled", ended
    assert ended["stopped_by"] == by and ended["report"]["stopped"], ended
    assert ended["report"]["summary"].startswith(f"stopped by {by} before it finished")
    done = cli(server, "stop", str(first["id"]))
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.strip() == (
        f"portway: run {first['id']} of slow-gc is cancelled: it has ended, there is nothing "
        "to stop"
    ), done.stderr

    # By the job's name: its running run, as Nexus's tasks stop does.
    third = run_now(admin, server.url, "slow-gc", dry_run=True)
    wait_for(admin, server.url, "slow-gc", third["id"], lambda r: r["state"] == "running")
    done = cli(server, "stop", "slow-gc")
    assert done.returncode == 0, done
    assert done.stdout.startswith(f"run {third['id']} of slow-gc asked to stop;"), done.stdout
    assert f"portway jobs show {third['id']}" in done.stdout
    ended = wait_run(admin, server.url, "slow-gc", third["id"], timeout=60)
    assert ended["state"] == "cancelled" and ended["stoppedBy"] == by, ended
    audit = admin.get(f"{server.url}/api/v1/audit", params={"event": "job.stop"}).json()
    mine = [r for r in audit["items"] if r["principal"] == by]
    assert sorted(r["detail"].get("run", 0) for r in mine) == [0, first["id"], third["id"]]
    assert [r["detail"]["cancelled"] for r in mine if "run" not in r["detail"]] == [
        [second["id"]]
    ]
