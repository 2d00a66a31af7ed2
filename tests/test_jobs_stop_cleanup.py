"""Stopping a cleanup run mid-way on a real `portway serve` (SQLite, security on, 2 workers).

A cleanup looks for a stop before each image. Four images of three tags each, a policy that
keeps each image's newest tag, and the test-only pause (`PORTWAY_JOB_PHASE_DELAY`) before
each image: a stop sent to the worker not running the run lands after the first image. The
run ends `cancelled` having removed whole images' tags only (each image keeps all three
tags or just its newest), is not run again, and the next run removes the rest."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from admin_api_support import NEXUS, admin_session
from jobs_support import JobsServer, run_now, serve_jobs, wait_run
from push_support import manifest_for, sha256
from support.cluster import token
from test_jobs_stop import post_on_other_worker, wait_for

DELAY = 3.0  # the pause at each phase and before each image
IMAGES = [f"docker-hosted/app{n}" for n in range(4)]
TAGS = ("v1", "v2", "v3")
HOSTED = {"name": "docker-hosted", "type": "hosted", "path_routing": True,
          "cleanup_policies": ["newest"]}  # fmt: skip
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
JOBS = {
    "jobs": {"lease_ttl": 6, "poll_interval": 1},
    "job": [{"name": "slow-cleanup", "type": "cleanup"}],  # run now only
    "cleanup_policy": [{"name": "newest", "keep_last": 1}],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsServer]:
    yield from serve_jobs(
        tmp_path_factory.mktemp("jobs-stop-cleanup"), JOBS,
        repositories=[HOSTED],
        env={"PORTWAY_JOB_PHASE_DELAY": str(DELAY)},
    )


def _session(server: JobsServer, image: str) -> requests.Session:
    auth = ("admin", server.admin_password() or "")
    session = requests.Session()
    bearer = token(server.url, auth, [f"repository:{image}:pull,push"])
    session.headers["Authorization"] = f"Bearer {bearer}"
    return session


def push_tags(server: JobsServer, image: str) -> None:
    session = _session(server, image)
    config = json.dumps({"architecture": "amd64", "os": "linux", "image": image}).encode()
    layer = image.encode() * 64
    for blob in (config, layer):
        answer = session.post(f"{server.url}/v2/{image}/blobs/uploads/",
                              params={"digest": sha256(blob)}, data=blob, timeout=60)  # fmt: skip
        assert answer.status_code == 201, answer.text
    body = manifest_for(config, [layer])
    for tag in TAGS:  # set one after the other: v3 is the newest
        answer = session.put(f"{server.url}/v2/{image}/manifests/{tag}", data=body, timeout=60,
                             headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
        assert answer.status_code == 201, answer.text
        time.sleep(0.05)


def tags_of(server: JobsServer, image: str) -> list[str]:
    answer = _session(server, image).get(f"{server.url}/v2/{image}/tags/list", timeout=60)
    assert answer.status_code == 200, answer.text
    return sorted(answer.json()["tags"] or [])


def test_a_cleanup_stopped_mid_way_removed_whole_images_tags_only(server: JobsServer) -> None:
    admin = admin_session(server)
    for image in IMAGES:
        push_tags(server, image)
    queued = run_now(admin, server.url, "slow-cleanup", dry_run=False)
    run = wait_for(
        admin, server.url, "slow-cleanup", queued["id"], lambda r: r["phase"] == "removing"
    )
    # Phase pause (3 s), the pause before the first image, its tags removed, then the pause
    # before the second image: the stop arrives in that one.
    time.sleep(2 * DELAY + DELAY / 2)
    runner = int(run["node"].split(":")[1])
    worker, status, body = post_on_other_worker(
        server, runner, f"{NEXUS}/tasks/slow-cleanup/stop"
    )
    assert (status, body) == (204, b"") and worker != runner

    ended = wait_run(admin, server.url, "slow-cleanup", queued["id"], timeout=60)
    assert ended["state"] == "cancelled" and ended["stoppedBy"] == "admin", ended
    report = ended["report"]
    assert report["stopped"] and report["summary"].startswith("stopped by admin"), report
    removed = report["counts"]["tags"]
    assert 0 < removed < 2 * len(IMAGES) and removed % 2 == 0, report  # whole images
    now = {image: tags_of(server, image) for image in IMAGES}
    assert sorted(map(len, now.values())) == sorted(
        [1] * (removed // 2) + [3] * (len(IMAGES) - removed // 2)
    ), now
    for item in report["items"]["tags"]:  # the removed ones are gone; the newest stays
        left = now[f"{item['repository']}/{item['image']}"]
        assert item["tag"] not in left and item["tag"] != "v3", (item, left)

    time.sleep(2.5)  # both workers polled: the stopped run is not run again
    runs = admin.get(f"{server.url}/api/v1/jobs/slow-cleanup/runs").json()
    assert [r["id"] for r in runs] == [queued["id"]], runs

    again = run_now(admin, server.url, "slow-cleanup", dry_run=False)
    done = wait_run(admin, server.url, "slow-cleanup", again["id"], timeout=90)
    assert done["state"] == "done" and not done["report"]["stopped"], done
    assert done["report"]["counts"]["tags"] == 2 * len(IMAGES) - removed, done["report"]
    assert {image: tags_of(server, image) for image in IMAGES} == {i: ["v3"] for i in IMAGES}
