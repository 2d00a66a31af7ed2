"""Shared pieces of the maintenance-job tests: garbage made over the registry API, and
following a run through the admin API until it ends."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from support.cluster import token
from support.server import PortwayServer

IMAGE = "docker-hosted/junk"


class JobsServer(PortwayServer):
    """A `PortwayServer` whose configuration adds top-level tables (`[jobs]`, `[[job]]`)."""

    def __init__(self, tmp_path: Path, *, extra: dict[str, Any], **kwargs: Any) -> None:
        self.extra = extra
        super().__init__(tmp_path, **kwargs)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), **self.extra}


def serve_jobs(tmp_path: Path, extra: dict[str, Any], **kwargs: Any) -> Iterator[JobsServer]:
    """A module fixture's server: two workers, security on (so stops can be refused), the
    jobs tables `extra`; stopped when the module is done."""
    kwargs.setdefault("workers", 2)
    kwargs.setdefault("security", {"enabled": True, "min_password_length": 8})
    node = JobsServer(tmp_path, extra=extra, **kwargs)
    node.start(timeout=90)
    try:
        yield node
    finally:
        node.stop()


def push_orphans(base: str, auth: tuple[str, str], count: int, size: int = 2048) -> list[str]:
    """`count` blobs uploaded (monolithic POST) that no manifest references: garbage as soon
    as `gc_hold` has passed. Returns their digests."""
    bearer = token(base, auth, [f"repository:{IMAGE}:pull,push"])
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {bearer}"
    digests = []
    for _ in range(count):
        data = os.urandom(size)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        answer = session.post(
            f"{base}/v2/{IMAGE}/blobs/uploads/", params={"digest": digest}, data=data, timeout=60
        )
        assert answer.status_code == 201, answer.text
        digests.append(digest)
    return digests


def blob_status(base: str, auth: tuple[str, str], digest: str) -> int:
    bearer = token(base, auth, [f"repository:{IMAGE}:pull"])
    answer = requests.head(
        f"{base}/v2/{IMAGE}/blobs/{digest}",
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=60,
    )
    return answer.status_code


def wait_run(
    session: requests.Session, base: str, job: str, run_id: int, timeout: float = 120
) -> dict[str, Any]:
    """The run's record once it is done, failed or cancelled."""
    deadline = time.monotonic() + timeout
    while True:
        answer = session.get(f"{base}/api/v1/jobs/{job}/runs/{run_id}", timeout=30)
        assert answer.status_code == 200, answer.text
        run: dict[str, Any] = answer.json()
        if run["state"] not in ("queued", "running"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['state']}: {run}"
        time.sleep(0.3)


def run_now(
    session: requests.Session, base: str, job: str, dry_run: bool | None = None
) -> dict[str, Any]:
    params = {} if dry_run is None else {"dryRun": "true" if dry_run else "false"}
    answer = session.post(f"{base}/api/v1/jobs/{job}/runs", params=params, timeout=30)
    assert answer.status_code == 202, answer.text
    assert answer.headers["Location"] == f"/api/v1/jobs/{job}/runs/{answer.json()['id']}"
    run: dict[str, Any] = answer.json()
    return run
