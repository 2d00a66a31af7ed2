"""Proxy single flight across nodes: clients on two `portway serve` processes (separate data
directories, one PostgreSQL database, one blob folder) pulling one cold layer through a proxy
repository make one upstream GET, and the download is coordinated by the cluster's lock (a
PostgreSQL advisory lock), not by a file lock in the shared folder."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from proxy_support import Relay, blob_gets, manifest_requests, proxy, v2, wait_for
from support.cluster import Cluster, start_cluster
from support.distribution import Distribution
from upstream_support import Pusher

BLOB = 6 * 1024 * 1024
RATE = 3 * 1024 * 1024  # bytes/s through the relay: the download lasts about 2 s
CLIENTS = 16


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    registry = Distribution(tmp_path_factory.mktemp("upstream")).start()
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, upstream: Distribution) -> Iterator[Relay]:
    slow = Relay(tmp_path_factory.mktemp("relay"), upstream.port, rate=RATE).start()
    yield slow
    slow.stop()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, relay: Relay
) -> Iterator[Cluster]:
    with start_cluster(
        tmp_path_factory.mktemp("cluster"), postgres_url, size=2,
        security={"enabled": False}, repositories=[proxy("hub", relay.url)],
    ) as started:  # fmt: skip
        yield started


def advisory_locks(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
    return int(row[0]) if row else 0


def lock_files(cluster: Cluster) -> list[Path]:
    return list(cluster.shared_blobs.rglob("*.lock"))


def test_cold_layer_pulled_on_two_nodes_makes_one_upstream_get(
    cluster: Cluster, upstream: Distribution
) -> None:
    data = os.urandom(BLOB)
    image = "team/layer"
    digest = Pusher(upstream.url).push_blob(image, data)
    urls = [v2(node, "hub", f"{image}/blobs/{digest}") for node in cluster.nodes]
    barrier = threading.Barrier(CLIENTS + 1)
    seen: dict[str, object] = {}

    def one(i: int) -> tuple[int, str]:
        barrier.wait()
        with requests.get(urls[i % 2], stream=True, timeout=120) as resp:
            hasher = hashlib.sha256()
            for chunk in resp.iter_content(1 << 20):
                hasher.update(chunk)
            return resp.status_code, "sha256:" + hasher.hexdigest()

    def watch() -> None:
        barrier.wait()
        wait_for(lambda: advisory_locks(cluster.database_url) > 0, 10, "an advisory lock")
        seen["locks"] = advisory_locks(cluster.database_url)
        seen["files"] = lock_files(cluster)

    with concurrent.futures.ThreadPoolExecutor(CLIENTS + 1) as pool:
        watcher = pool.submit(watch)
        results = list(pool.map(one, range(CLIENTS)))
        watcher.result()
    assert results == [(200, digest)] * CLIENTS
    assert blob_gets(upstream.access_log(), digest) == 1
    assert seen["files"] == [], "the download was locked by a file, not by the database"
    wait_for(lambda: advisory_locks(cluster.database_url) == 0, 10, "the locks released")
    for url in urls:  # cached for every node now
        assert requests.get(url, timeout=60).content == data
    assert blob_gets(upstream.access_log(), digest) == 1


def test_cold_manifest_pulled_on_two_nodes_makes_one_upstream_get(
    cluster: Cluster, upstream: Distribution
) -> None:
    image = "team/tagged"
    Pusher(upstream.url).push_image(image, "v1")
    before = manifest_requests(upstream.access_log(), image)
    barrier = threading.Barrier(CLIENTS)
    accept = "application/vnd.oci.image.manifest.v1+json"

    def one(i: int) -> int:
        barrier.wait()
        node = cluster.nodes[i % 2]
        url = v2(node, "hub", f"{image}/manifests/v1")
        return requests.get(url, headers={"Accept": accept}, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        assert list(pool.map(one, range(CLIENTS))) == [200] * CLIENTS
    assert manifest_requests(upstream.access_log(), image) - before == 1
