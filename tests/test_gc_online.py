"""Garbage collection while a real `portway serve` takes pushes: each existence answer a push
relies on (blob HEAD, mount, an upload's closing PUT) survives a `portway gc` pass run between
it and the manifest PUT; after a delete and a pass, the registry no longer claims the layers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portway.cli.gc import report_json
from portway.compose import Portway
from portway.config import load_settings
from portway.lifecycle.collector import Collector
from push_support import Registry, manifest_for, sha256
from support.server import PortwayServer

HOLD = 4  # [server] gc_hold in these tests (a loaded machine needs a few seconds)
AGED = HOLD + 1.5  # a candidate this old is acted on

# Every test on the data folder's SQLite and on PostgreSQL (a fresh database per test).
pytestmark = pytest.mark.parametrize("server_database", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def server(tmp_path: Path, server_database: str | None) -> Iterator[PortwayServer]:
    srv = PortwayServer(tmp_path, server={"gc_hold": HOLD}, database_url=server_database).start()
    yield srv
    srv.stop()


def registry(server: PortwayServer) -> Registry:
    return Registry(f"{server.url}/repository/docker-hosted")


def portway_gc(server: PortwayServer, *extra: str) -> dict[str, Any]:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "portway",
            "gc",
            "--config",
            str(server.config_path),
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def collect(server: PortwayServer) -> dict[str, Any]:
    """One pass from this process (another process on the server's database and blob
    store, as `portway gc` is), without a command's start-up time eating into the hold."""
    with Portway(load_settings(server.config_path)) as root:
        collector = Collector(root.meta, root.blobs, HOLD)
        return report_json(asyncio.run(collector.run()))


def blobs_of(report: dict[str, Any]) -> set[str]:
    return {b["digest"] for b in report["blobs"]}


def push_blob(reg: Registry, image: str, data: bytes) -> None:
    reply = reg.upload_monolithic(image, sha256(data), data, len(data))
    assert reply.status == 201, (reply.status, reply.body[:300])


def test_blob_head_then_gc_then_manifest_put(server: PortwayServer) -> None:
    reg = registry(server)
    config, layer = b'{"os":"linux"}', b"layer vouched for by HEAD"
    push_blob(reg, "app", config)
    push_blob(reg, "app", layer)
    time.sleep(AGED)  # both are garbage now if no manifest comes
    assert reg.head_blob("app", sha256(layer)).status == 200  # the client skips the upload
    assert reg.head_blob("app", sha256(config)).status == 200
    report = collect(server)
    assert blobs_of(report) == set() and report["held"] == 2
    put = reg.put_manifest("app", "v1", manifest_for(config, [layer]))
    assert put.status == 201, put.body
    assert reg.pull_blob("app", sha256(layer))[1] == sha256(layer).split(":")[1]


def test_mount_then_gc_then_manifest_put(server: PortwayServer) -> None:
    reg = registry(server)
    config, layer = b'{"os":"mounted"}', b"layer mounted from a deleted image"
    push_blob(reg, "source", config)
    push_blob(reg, "source", layer)
    put = reg.put_manifest("source", "v1", manifest_for(config, [layer]))
    assert put.status == 201
    deleted = reg.request(
        "DELETE", reg.path("source", f"manifests/{put.header('Docker-Content-Digest')}")
    )
    assert deleted.status == 202
    time.sleep(AGED)  # the source's links are garbage from now on
    for data in (config, layer):
        mount = reg.request(
            "POST", reg.path("target", f"blobs/uploads/?mount={sha256(data)}&from=source"), b""
        )
        assert mount.status == 201, mount.body
    report = collect(server)
    assert {(link["image"], link["digest"]) for link in report["blob_links"]} == {
        ("source", sha256(config)),
        ("source", sha256(layer)),
    }
    assert blobs_of(report) == set()  # the target's new links keep the blobs
    put = reg.put_manifest("target", "v1", manifest_for(config, [layer]))
    assert put.status == 201, put.body


def test_upload_commit_then_gc_then_manifest_put(server: PortwayServer) -> None:
    reg = registry(server)
    config, layer = b'{"os":"chunked"}', b"layer uploaded in chunks"
    push_blob(reg, "app", config)
    assert reg.upload_chunked("app", [layer[:10], layer[10:]], sha256(layer)).status == 201
    assert blobs_of(collect(server)) == set()
    put = reg.put_manifest("app", "v1", manifest_for(config, [layer]))
    assert put.status == 201, put.body
    time.sleep(AGED)
    assert blobs_of(collect(server)) == set()  # referenced now: never garbage


def test_after_delete_and_gc_a_repush_uploads_the_layers_again(server: PortwayServer) -> None:
    reg = registry(server)
    config, layers = b'{"os":"again"}', [b"first layer" * 100, b"second layer" * 100]
    for data in (config, *layers):
        push_blob(reg, "app", data)
    put = reg.put_manifest("app", "v1", manifest_for(config, layers))
    digest = put.header("Docker-Content-Digest")
    assert reg.request("DELETE", reg.path("app", f"manifests/{digest}")).status == 202
    time.sleep(AGED)
    dry = portway_gc(server, "--dry-run")
    report = portway_gc(server)
    assert blobs_of(dry) == blobs_of(report) == {sha256(d) for d in (config, *layers)}
    assert report["bytes_freed"] == sum(len(d) for d in (config, *layers))
    for data in (config, *layers):
        assert reg.head_blob("app", sha256(data)).status == 404  # not claimed any more
        assert reg.head_blob("app", sha256(data)).status == 404
    for data in (config, *layers):
        push_blob(reg, "app", data)
    assert reg.put_manifest("app", "v1", manifest_for(config, layers)).status == 201
    for data in layers:
        status, hexdigest, size = reg.pull_blob("app", sha256(data))
        assert (status, "sha256:" + hexdigest, size) == (200, sha256(data), len(data))
