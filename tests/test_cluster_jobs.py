"""Exactly-once maintenance jobs on the 3-node cluster (PostgreSQL, shared blob folder, HAProxy):
the node running a garbage collection is SIGKILLed mid-run; another node takes the job's lease
over within two lease lifetimes, runs it again and deletes the garbage; the run records show
strictly growing fencing tokens and no two runs at once. A job scheduled every 10 seconds
runs once per fire time on one of the three nodes.

A test-only knob slows the runs down: `PORTWAY_JOB_PHASE_DELAY` pauses a run at each phase
(README "Maintenance jobs"), so the kill surely lands between planning and deleting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import requests

from jobs_support import blob_status, push_orphans, run_now, wait_run
from support.cluster import Cluster, start_cluster

TTL = 6.0  # [jobs] lease_ttl: two lifetimes are 12 s
DELAY = 4.0  # seconds at each phase of a run
JOBS = {
    "jobs": {"lease_ttl": TTL, "poll_interval": 1},
    "job": [
        {"name": "slow-gc", "type": "gc"},  # run now only
        {"name": "tick", "type": "upload_purge", "schedule": "*/10 * * * * *"},
    ],
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("cluster-jobs")
    with start_cluster(
        root,
        postgres_url,
        tables=JOBS,
        server={"gc_hold": 1},
        env={"PORTWAY_JOB_PHASE_DELAY": str(DELAY)},
    ) as started:
        yield started


def _runs(session: requests.Session, base: str, job: str) -> list[dict[str, Any]]:
    answer = session.get(f"{base}/api/v1/jobs/{job}/runs", params={"limit": 1000}, timeout=30)
    assert answer.status_code == 200, answer.text
    runs: list[dict[str, Any]] = answer.json()
    return sorted(runs, key=lambda r: r["id"])


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_a_killed_holder_is_taken_over_and_never_two_run_at_once(cluster: Cluster) -> None:
    session = cluster.session()
    base = cluster.front_url
    garbage = push_orphans(base, cluster.admin, 20)
    time.sleep(2.5)  # past gc_hold and its margin
    queued = run_now(session, base, "slow-gc")
    deadline = time.monotonic() + 60
    while True:  # until it has planned (its node holds the lease and knows the garbage)
        run = session.get(f"{base}/api/v1/jobs/slow-gc/runs/{queued['id']}", timeout=30).json()
        if run["state"] == "running" and run["phase"] == "deleting":
            break
        assert run["state"] in ("queued", "running"), run
        assert time.monotonic() < deadline, run
        time.sleep(0.2)
    assert run["progress"]["blobs"] >= 20
    holder_pid = int(run["node"].split(":")[1])
    victims = [n for n in cluster.nodes if n.pid == holder_pid]
    assert len(victims) == 1, (run["node"], [n.pid for n in cluster.nodes])
    victims[0].kill()  # SIGKILL: no release, no last record
    killed_at = time.time()
    survivor = next(n for n in cluster.nodes if n is not victims[0])

    deadline = time.monotonic() + 2 * TTL + 30
    while True:
        runs = _runs(session, survivor.url, "slow-gc")
        again = [r for r in runs if r["retryOf"] == queued["id"]]
        if again:
            break
        assert time.monotonic() < deadline, runs
        time.sleep(0.2)
    takeover = _ts(again[0]["started"]) - killed_at
    print(f"takeover of slow-gc {takeover:.1f} s after SIGKILL (lease_ttl {TTL:g} s)")
    assert takeover < 2 * TTL
    finished = wait_run(session, survivor.url, "slow-gc", again[0]["id"], timeout=120)
    assert finished["state"] == "done", finished
    assert finished["node"] != run["node"] and finished["trigger"] == "manual"
    assert set(garbage) <= {b["digest"] for b in finished["report"]["items"]["blobs"]}
    assert all(blob_status(survivor.url, cluster.admin, d) == 404 for d in garbage)

    killed = session.get(f"{survivor.url}/api/v1/jobs/slow-gc/runs/{queued['id']}").json()
    assert killed["state"] == "failed" and killed["interrupted"]
    assert "interrupted" in killed["error"] and killed["report"] is None
    # Never two at once: each run's token is above the one before it, and each run's last
    # fenced write (heartbeat) and end come before the next run's start.
    runs = [r for r in _runs(session, survivor.url, "slow-gc") if r["started"]]
    tokens = [r["leaseToken"] for r in runs]
    assert tokens == sorted(set(tokens)), tokens
    for before, after in pairwise(runs):
        assert _ts(before["heartbeat"]) <= _ts(after["started"]), (before, after)
        assert _ts(before["ended"]) <= _ts(after["started"]), (before, after)


def test_a_scheduled_job_runs_once_per_fire_time_on_one_node(cluster: Cluster) -> None:
    session = cluster.session()
    alive = next(n for n in cluster.nodes if n.alive())
    deadline = time.monotonic() + 90
    while True:  # two fire times done (every 10 s; a run takes a phase delay or more)
        done = [
            r
            for r in _runs(session, alive.url, "tick")
            if r["trigger"] == "schedule" and r["state"] == "done"
        ]
        if len(done) >= 2:
            break
        assert time.monotonic() < deadline, done
        time.sleep(2)
    time.sleep(3)  # every node polled again after the last one
    runs = [r for r in _runs(session, alive.url, "tick") if r["trigger"] == "schedule"]
    fires = [r["fireTime"] for r in runs if r["retryOf"] is None]
    assert len(fires) == len(set(fires)), fires  # once per fire time, not once per node
    for r in runs:
        assert datetime.fromisoformat(r["fireTime"]).second % 10 == 0
    # One lease turn runs every run that is due, so runs back to back may share a token,
    # on the node holding it; a later holder's token is larger.
    tokens = [r["leaseToken"] for r in runs]
    assert tokens == sorted(tokens)
    for before, after in pairwise(runs):
        if before["leaseToken"] == after["leaseToken"]:
            assert before["node"] == after["node"], (before, after)
    for before, after in pairwise(runs):
        if before["ended"] and after["started"]:
            assert _ts(before["ended"]) <= _ts(after["started"])


def test_a_stopped_node_hands_its_run_over_at_once(cluster: Cluster) -> None:
    """SIGTERM: the run is recorded cancelled (interrupted), the lease given back, and another
    node runs it again without waiting for the lease to run out."""
    session = cluster.session()
    alive = [n for n in cluster.nodes if n.alive()]
    assert len(alive) == 2
    queued = run_now(session, alive[0].url, "slow-gc", dry_run=True)
    deadline = time.monotonic() + 60
    while True:
        run = session.get(f"{alive[0].url}/api/v1/jobs/slow-gc/runs/{queued['id']}").json()
        if run["state"] == "running":
            break
        assert run["state"] == "queued" and time.monotonic() < deadline, run
        time.sleep(0.2)
    holder = next(n for n in alive if n.pid == int(run["node"].split(":")[1]))
    other = next(n for n in alive if n is not holder)
    stopped_at = time.time()
    holder.stop()
    deadline = time.monotonic() + 30
    while True:
        again = [r for r in _runs(session, other.url, "slow-gc") if r["retryOf"] == queued["id"]]
        if again:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    handover = _ts(again[0]["started"]) - stopped_at
    print(f"hand-over of slow-gc {handover:.1f} s after SIGTERM (lease_ttl {TTL:g} s)")
    assert handover < TTL  # the lease was given back, not left to run out
    cancelled = session.get(f"{other.url}/api/v1/jobs/slow-gc/runs/{queued['id']}").json()
    assert cancelled["state"] == "cancelled" and cancelled["interrupted"]
    assert cancelled["node"] == run["node"]  # the stopping node wrote it itself
    finished = wait_run(session, other.url, "slow-gc", again[0]["id"], timeout=120)
    assert finished["state"] == "done" and finished["dryRun"]
    assert finished["node"] != run["node"]
