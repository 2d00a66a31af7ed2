"""Proxy metrics of a real `portway serve` (two workers) in front of a real upstream (CNCF
distribution), read from real /metrics scrapes: cache hits and misses, upstream errors by
kind and the breaker's state, counted exactly after a known workload."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from metrics_support import key, settle, value
from proxy_support import ACCEPT, blob_is_cached, get_blob, get_manifest, proxy, v2, wait_for
from push_support import Registry, manifest_for, sha256
from support.distribution import Distribution
from support.server import PortwayServer

REPO = "docker-proxy"


@pytest.fixture()
def upstream(tmp_path: Path) -> Iterator[Distribution]:
    reg = Distribution(tmp_path / "upstream").start()
    yield reg
    reg.stop()


def test_hits_misses_errors_and_breaker_are_counted_exactly(
    tmp_path: Path, upstream: Distribution
) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer = bytes(range(256)) * 800
    pusher = Registry(upstream.url)
    for blob in (config, layer):
        assert pusher.upload_chunked("team/app", [blob], sha256(blob)).status == 201
    manifest = manifest_for(config, [layer])
    assert pusher.put_manifest("team/app", "v1", manifest).status == 201
    digest = sha256(manifest)

    server = PortwayServer(
        tmp_path / "portway",
        workers=2,
        repositories=[proxy(REPO, upstream.url), {"name": "docker-hosted", "type": "hosted"}],
    )
    server.start(timeout=60)
    try:
        # Manifests: one cold pull by tag (a miss), then 3 by tag and 2 by digest (hits).
        assert get_manifest(server, REPO, "team/app", "v1").status_code == 200
        for ref in ("v1", "v1", "v1", digest, digest):
            reply = get_manifest(server, REPO, "team/app", ref)
            assert reply.status_code == 200 and reply.content == manifest
        # Blobs: a cold GET (a miss); once cached, 3 GETs and 2 HEADs (hits).
        assert get_blob(server, REPO, "team/app", sha256(layer)).content == layer
        wait_for(lambda: blob_is_cached(server, sha256(layer)), what="the layer cached")
        time.sleep(1.0)  # the database link follows the file
        for _ in range(3):
            assert get_blob(server, REPO, "team/app", sha256(layer)).content == layer
        url = v2(server, REPO, f"team/app/blobs/{sha256(layer)}")
        for _ in range(2):
            assert requests.head(url, timeout=30).status_code == 200
        # An image the upstream does not have: a miss and a not_found error.
        assert get_manifest(server, REPO, "team/none", "v1").status_code == 404

        # The upstream goes away: on one kept-alive connection (one worker), 5 refused
        # connections open that worker's breaker, the 6th request is not sent at all.
        upstream.stop()
        workers = set()
        with requests.Session() as session:
            for i in range(6):
                reply = session.get(
                    v2(server, REPO, f"team/gone{i}/manifests/v1"),
                    headers={"Accept": ACCEPT},
                    timeout=60,
                )
                assert reply.status_code in (404, 502, 503), reply.status_code
                workers.add((reply.headers.get("X-Request-Id") or "").partition("-")[0])
        assert len(workers) == 1, workers

        P = "portway_proxy_"
        expected = {
            key(P + "cache_misses_total", repository=REPO, type="manifest"): 1 + 1 + 6,
            key(P + "cache_hits_total", repository=REPO, type="manifest"): 5,
            key(P + "cache_misses_total", repository=REPO, type="blob"): 1,
            key(P + "cache_hits_total", repository=REPO, type="blob"): 5,
            key(P + "upstream_errors_total", repository=REPO, kind="not_found"): 1,
            key(P + "upstream_errors_total", repository=REPO, kind="unreachable"): 5,
            key(P + "upstream_errors_total", repository=REPO, kind="blocked"): 1,
            key(P + "upstream_blocked", repository=REPO): 1,
            key(P + "upstream_consecutive_failures", repository=REPO): 5,
        }
        samples = settle(server.url, expected)
        kinds = {
            dict(labels)["kind"]
            for (name, labels) in samples
            if name == P + "upstream_errors_total"
        }
        assert kinds == {"not_found", "unreachable", "blocked"}
        assert value(samples, P + "cache_hits_total", repository="docker-hosted", type="blob") == 0
    finally:
        server.stop()
