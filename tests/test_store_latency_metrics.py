"""Database and blob storage latencies in /metrics of a real `portway serve` (two workers,
the default SQLite database and filesystem blob store).

A known workload (a push: a monolithic and a chunked blob upload and a manifest PUT; then
manifest and blob GETs) must grow the database histogram by the store operations it made
and the storage histogram by the filesystem operations, with exact counts where the
workload fixes them; a held database write lock must show as counted errors. With security
on, the user store's and job records' calls are counted as well.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from admin_api_support import NEXUS, admin_session
from jobs_support import JobsServer, run_now, wait_run
from metrics_support import Samples, key, scrape, settle, settle_on, value
from push_support import Registry, manifest_for, sha256
from support.server import PortwayServer
from test_faults_dblock import write_lock_held

DB = "portway_database_operation_duration_seconds"
STORAGE = "portway_storage_operation_duration_seconds"
BLOB_GETS = 4


def _counts(samples: Samples, name: str, label: str, **fixed: str) -> dict[str, float]:
    """`name`_count by the value of `label`, among the series with the `fixed` labels."""
    out: dict[str, float] = {}
    for (sample, labels), number in samples.items():
        found = dict(labels)
        if sample == f"{name}_count" and all(found.get(k) == v for k, v in fixed.items()):
            out[found[label]] = out.get(found[label], 0.0) + number
    return out


def _grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {op: n - before.get(op, 0.0) for op, n in after.items() if n != before.get(op, 0.0)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> PortwayServer:
    srv = PortwayServer(tmp_path_factory.mktemp("latency"), workers=2)
    srv.start(timeout=60)
    yield srv  # type: ignore[misc]
    srv.stop()


def test_a_push_and_pulls_show_database_and_storage_latencies(server: PortwayServer) -> None:
    before = scrape(server.url)
    reg = Registry(server.repository_url())
    config = json.dumps({"architecture": "amd64", "os": "linux", "test": "latency"}).encode()
    layer = bytes(range(256)) * 1200  # 300 KiB: served from its file
    image = "latency/app"
    assert reg.upload_monolithic(image, sha256(config), config, len(config)).status == 201
    half = len(layer) // 2
    assert reg.upload_chunked(image, [layer[:half], layer[half:]], sha256(layer)).status == 201
    assert reg.put_manifest(image, "v1", manifest_for(config, [layer])).status == 201
    for _ in range(3):
        assert reg.get_manifest(image, "v1").status == 200
    for _ in range(BLOB_GETS):
        assert reg.pull_blob(image, sha256(layer))[0] == 200

    # Exact where the workload fixes the count: one manifest PUT is one put_manifest write,
    # and the two uploads publish two blobs, each by one move into the blob tree.
    settle(
        server.url,
        {
            key(f"{DB}_count", operation="put_manifest", access="write"): value(
                before, f"{DB}_count", operation="put_manifest", access="write"
            )
            + 1,
            key(f"{STORAGE}_count", backend="filesystem", operation="move"): value(
                before, f"{STORAGE}_count", backend="filesystem", operation="move"
            )
            + 2,
        },
    )

    # Every worker flushes on its own clock: the one that wrote a chunk but published no
    # blob may still be behind the exact counts above.
    def storage_grown(samples: Samples) -> dict[str, float]:
        return _grown(
            _counts(before, STORAGE, "operation", backend="filesystem"),
            _counts(samples, STORAGE, "operation", backend="filesystem"),
        )

    def flushed(samples: Samples) -> bool:
        grown = storage_grown(samples)
        return (
            grown.get("write", 0) >= 3
            and grown.get("append_open", 0) >= 3
            and grown.get("append_open") == grown.get("close")
            and grown.get("stat", 0) >= BLOB_GETS
        )

    after = settle_on(server.url, flushed)
    reads = _grown(
        _counts(before, DB, "operation", access="read"),
        _counts(after, DB, "operation", access="read"),
    )
    writes = _grown(
        _counts(before, DB, "operation", access="write"),
        _counts(after, DB, "operation", access="write"),
    )
    assert writes.get("put_manifest") == 1, writes
    assert {"create_upload", "finish_upload"} <= writes.keys(), writes
    assert reads.get("manifest_by_tag", 0) >= 1, reads  # the first GET of each worker asks
    assert reads.get("missing_blobs", 0) >= 1, reads  # the manifest PUT checks its blobs
    storage = storage_grown(after)
    assert storage.get("move") == 2, storage
    assert storage.get("stat", 0) >= BLOB_GETS, storage  # each GET checks the blob's size
    assert storage.get("write", 0) >= 3, storage  # one body, two chunks
    assert storage.get("append_open", 0) >= 3 and storage["append_open"] == storage["close"]
    assert _counts(after, STORAGE, "operation", backend="s3") == {}

    # Histograms hold: +Inf counts every call, the seconds add up to more than nothing.
    for name, labels in (
        (DB, {"operation": "put_manifest", "access": "write"}),
        (STORAGE, {"backend": "filesystem", "operation": "move"}),
    ):
        count = value(after, f"{name}_count", **labels)
        assert value(after, f"{name}_bucket", le="+Inf", **labels) == count
        assert 0 < value(after, f"{name}_sum", **labels) < count * 10
    errors = [
        (n, dict(k), v)
        for (n, k), v in after.items()
        if n.endswith("_operation_errors_total") and v
    ]
    assert errors == []


def test_writes_refused_for_a_held_lock_count_as_database_errors(tmp_path: Path) -> None:
    srv = PortwayServer(tmp_path, server={"database_busy_timeout": 0.3}).start(timeout=60)
    try:
        base = f"{srv.repository_url()}/v2/latency/busy/blobs/uploads/"
        assert requests.post(base, timeout=10).status_code == 202  # the first use, unlocked
        with write_lock_held(srv.data_dir / "portway.db", 30):
            for _ in range(2):
                assert requests.post(base, timeout=10).status_code == 503
        errors = "portway_database_operation_errors_total"
        labels = {"operation": "create_upload", "access": "write"}
        samples = settle(
            srv.url,
            {
                key(errors, **labels): 2,
                key(f"{DB}_count", **labels): 3,  # refused calls are timed too
            },
        )
        assert value(samples, f"{DB}_sum", **labels) >= 2 * 0.3 * 0.9  # each waited for it
    finally:
        srv.stop()


def test_users_tokens_and_job_records_are_timed_too(tmp_path: Path) -> None:
    """Security on: a user added over the admin API, a token exchange by that user, a job
    run now and followed. The user store's and job records' calls are in the database
    histogram under their own operations, exactly once where the workload fixes it."""
    jobs = {"jobs": {"poll_interval": 1}, "job": [{"name": "purge-now", "type": "upload_purge"}]}
    srv = JobsServer(
        tmp_path,
        extra=jobs,
        workers=2,
        security={"enabled": True, "min_password_length": 8},
    ).start(timeout=90)
    try:
        admin = admin_session(srv)
        assert admin.get(f"{srv.url}/api/v1/jobs").status_code == 200  # admin's login: before
        before = scrape(srv.url)
        user = {"userId": "carol", "firstName": "C", "lastName": "L",
                "emailAddress": "carol@example.org", "password": "carol-secret-1",
                "status": "active", "roles": []}  # fmt: skip
        assert admin.post(f"{srv.url}{NEXUS}/security/users", json=user).status_code == 200
        answer = requests.get(
            f"{srv.url}/v2/token", auth=("carol", "carol-secret-1"), timeout=30,
            params={"service": "portway", "scope": "repository:any/thing:pull"},
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        ended = wait_run(admin, srv.url, "purge-now", run_now(admin, srv.url, "purge-now")["id"])
        assert ended["state"] == "done", ended

        def grown_by(access: str, operation: str, by: int) -> tuple[Any, float]:
            was = value(before, f"{DB}_count", operation=operation, access=access)
            return key(f"{DB}_count", operation=operation, access=access), was + by

        after = settle(
            srv.url,
            dict(
                [
                    grown_by("write", "add_user", 1),
                    grown_by("write", "job_queue", 1),
                    grown_by("write", "job_finish", 1),
                ]
            ),
        )
        deadline = time.monotonic() + 15  # the other worker's reads may flush a little later
        while True:
            reads = _grown(
                _counts(before, DB, "operation", access="read"),
                _counts(after, DB, "operation", access="read"),
            )
            writes = _grown(
                _counts(before, DB, "operation", access="write"),
                _counts(after, DB, "operation", access="write"),
            )
            if {"authenticate", "job_outlook"} <= reads.keys() or time.monotonic() > deadline:
                break
            time.sleep(0.3)
            after = scrape(srv.url)
        assert writes["add_user"] == 1 and writes["job_queue"] == 1, writes
        assert writes["job_finish"] == 1 and writes.get("job_claim", 0) >= 1, writes
        assert writes.get("purge_refresh_tokens", 0) >= 1, writes  # the run purged them
        # The run held its job's lease from its claim to its end.
        assert writes.get("lease_acquire", 0) >= 1 and writes.get("lease_release", 0) >= 1, writes
        assert reads.get("authenticate", 0) >= 1, reads  # carol's password checked
        assert reads.get("job_run", 0) >= 2, reads  # the runner's look and the API's GETs
        assert reads.get("job_outlook", 0) >= 1, reads  # the schedulers poll
        # A bounded set: fixed names from the code, none from the request.
        known = {"add_user", "authenticate", "principal", "load_roles", "get_user"}
        assert "carol" not in "".join(reads) + "".join(writes)
        assert known & reads.keys(), reads
        labels = {"operation": "add_user", "access": "write"}
        count = value(after, f"{DB}_count", **labels)
        assert value(after, f"{DB}_bucket", le="+Inf", **labels) == count
        assert value(after, f"{DB}_sum", **labels) > 0
    finally:
        srv.stop()
