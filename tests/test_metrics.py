"""Prometheus /metrics of a real `portway serve` with two workers: counted exactly.

A known workload (one push: a monolithic and a chunked blob upload and a manifest PUT; then N
manifest GETs and M blob GETs, each on a fresh connection, so both workers serve some) must
show as exactly those counts in Portway's own families and in distribution's
`registry_http_*` names, summed over the workers' multiprocess files.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from metrics_support import key, label_values, scrape, settle, value
from portway.http.observe import _metrics_dir
from push_support import Registry, manifest_for, sha256
from support.ports import free_port
from support.server import PortwayServer

MIN_MANIFEST_GETS = 7
M_BLOB_GETS = 5
LAYER_SIZE = 300 * 1024  # above the in-memory limit: served with sendfile


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> PortwayServer:
    srv = PortwayServer(
        tmp_path_factory.mktemp("metrics"),
        workers=2,
        connectors=[{"repository": "docker-hosted"}],
    )
    srv.start(timeout=60)
    yield srv  # type: ignore[misc]
    srv.stop()


def test_a_known_workload_is_counted_exactly(server: PortwayServer) -> None:
    reg = Registry(server.repository_url())
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer = bytes(range(256)) * (LAYER_SIZE // 256)
    image = "metrics/app"
    assert reg.upload_monolithic(image, sha256(config), config, len(config)).status == 201
    half = len(layer) // 2
    assert reg.upload_chunked(image, [layer[:half], layer[half:]], sha256(layer)).status == 201
    manifest = manifest_for(config, [layer])
    assert reg.put_manifest(image, "v1", manifest).status == 201
    # Both workers share one listening socket: go on until each has served some (X-Request-Id
    # starts with a per-process prefix), then count exactly what was sent.
    workers: set[str] = set()
    gets = 0
    while gets < MIN_MANIFEST_GETS or (len(workers) < 2 and gets < 400):
        reply = reg.get_manifest(image, "v1")
        assert reply.status == 200 and reply.body == manifest
        workers.add((reply.header("X-Request-Id") or "").partition("-")[0])
        gets += 1
    for _ in range(M_BLOB_GETS):
        status, _, size = reg.pull_blob(image, sha256(layer))
        assert (status, size) == (200, len(layer))
    assert len(workers) == 2, f"all manifest GETs went to one worker: {workers}"

    P = "portway_http_requests_total"
    repo = "docker-hosted"
    expected = {
        key(P, route="manifest", method="GET", status="200"): gets,
        key(P, route="blob", method="GET", status="200"): M_BLOB_GETS,
        key(P, route="manifest", method="PUT", status="201"): 1,
        key(P, route="upload", method="POST", status="201"): 1,
        key(P, route="upload", method="POST", status="202"): 1,
        key(P, route="upload", method="PATCH", status="202"): 2,
        key(P, route="upload", method="PUT", status="201"): 1,
        key("portway_http_request_duration_seconds_count", route="manifest", method="GET"): gets,
        key("portway_http_sent_bytes_total", route="blob"): M_BLOB_GETS * len(layer),
        key("portway_http_sent_bytes_total", route="manifest"): gets * len(manifest),
        key("portway_http_received_bytes_total", route="upload"): len(config) + len(layer),
        key("portway_http_received_bytes_total", route="manifest"): len(manifest),
        key("portway_repository_requests_total", repository=repo, route="manifest"): gets + 1,
        key("portway_repository_requests_total", repository=repo, route="blob"): M_BLOB_GETS,
        key("portway_repository_sent_bytes_total", repository=repo): M_BLOB_GETS * len(layer)
        + gets * len(manifest),
        key("portway_upload_sessions_started_total", repository=repo): 2,
        key("portway_upload_sessions_finished_total", repository=repo, outcome="completed"): 2,
        # distribution's names
        key("registry_http_requests_total", code="200", handler="manifest", method="GET"): gets,
        key("registry_http_requests_total", code="200", handler="blob", method="GET"): 5,
        key("registry_http_requests_total", code="201", handler="manifest", method="PUT"): 1,
        key("registry_http_requests_total", code="202", handler="blob_upload", method="POST"): 1,
        key(
            "registry_http_requests_total", code="202", handler="blob_upload_chunk", method="PATCH"
        ): 2,
        key("registry_http_request_duration_seconds_count", handler="blob", method="GET"): 5,
        key("registry_http_response_size_bytes_count", handler="blob"): M_BLOB_GETS,
        key("registry_http_response_size_bytes_sum", handler="blob"): M_BLOB_GETS * len(layer),
        key("registry_http_request_size_bytes_sum", handler="blob_upload_chunk"): len(layer),
        key("registry_http_in_flight_requests", handler="manifest"): 0,
    }
    samples = settle(server.url, expected)
    # Nothing else was counted under these routes (no request counted twice by two workers).
    manifest_gets = [
        v for (n, labels), v in samples.items()
        if n == P and ("route", "manifest") in labels and ("method", "GET") in labels
    ]  # fmt: skip
    assert sum(manifest_gets) == gets
    # A scrape is itself counted, and adds nothing to the registry's counts.
    time.sleep(1.5)
    again = scrape(server.url)
    for k, v in expected.items():
        assert again.get(k, 0.0) == v, k
    assert value(again, P, route="metrics", method="GET", status="200") >= 2


def test_metrics_only_on_the_main_listener(server: PortwayServer) -> None:
    connector = f"http://127.0.0.1:{server.connector_port()}"
    reply = requests.get(f"{connector}/metrics", timeout=10)
    assert reply.status_code == 404
    assert reply.json()["errors"][0]["code"] == "NOT_FOUND"
    # Not where a Docker client looks: /v2/metrics is a registry path, not the metrics.
    assert "portway_http_requests_total" not in requests.get(f"{server.url}/v2/metrics").text


def test_a_request_being_answered_counts_in_flight_by_handler(server: PortwayServer) -> None:
    """A PATCH whose body is still arriving shows in both in-flight gauges, under its
    distribution handler, and leaves them once answered."""
    base = server.repository_url()
    started = requests.post(f"{base}/v2/metrics/slow/blobs/uploads/", timeout=30)
    assert started.status_code == 202, started.text
    location = urljoin(base + "/", started.headers["Location"])
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"first part "
        release.wait(30)
        yield b"and the rest"

    answers: list[int] = []
    sender = threading.Thread(
        target=lambda: answers.append(requests.patch(location, data=body(), timeout=60).status_code)
    )
    sender.start()
    chunk = key("registry_http_in_flight_requests", handler="blob_upload_chunk")
    try:
        samples = settle(server.url, {chunk: 1})
        assert value(samples, "portway_http_in_flight_requests") >= 2  # the PATCH, the scrape
    finally:
        release.set()
        sender.join()
    assert answers == [202]
    settle(server.url, {chunk: 0})


def test_repository_labels_stay_within_the_budget(tmp_path: Path) -> None:
    repos = [{"name": f"team-{i}", "type": "hosted", "path_routing": True} for i in range(3)]
    srv = PortwayServer(
        tmp_path, repositories=repos, server={"metrics_repository_labels": 1}
    ).start(timeout=60)
    try:
        for i in range(3):
            url = f"{srv.url}/v2/team-{i}/app/manifests/latest"
            assert requests.get(url, timeout=10).status_code == 404
        name = "portway_repository_requests_total"
        samples = settle(
            srv.url,
            {
                key(name, repository="team-0", route="manifest"): 1,
                key(name, repository="_other", route="manifest"): 2,
            },
        )
        assert label_values(samples, name, "repository") == {"team-0", "_other"}
    finally:
        srv.stop()


def test_the_label_budget_holds_at_ten_thousand_repositories(tmp_path: Path) -> None:
    """The recorder (in its own process: it sets prometheus-client's multiprocess mode) sees
    a request for each of 10,000 repositories; the files hold 100 repository labels + one."""
    script = f"""
import sys
from pathlib import Path
from portway.observe.metrics import Recorder
names = [f"repo-{{i}}" for i in range(10000)]
rec = Recorder(Path({str(tmp_path)!r}), names, 100)
for name in names:
    rec.record("manifest", "GET", 200, name, 0.001, 0, 10)
rec.flush()
sys.stdout.write(rec.render().decode())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    lines = [x for x in out.splitlines() if x.startswith("portway_repository_requests_total{")]
    assert len(lines) == 101
    assert any('repository="_other"' in x and x.endswith(" 9900.0") for x in lines)


def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    srv = PortwayServer(tmp_path, server={"metrics": False}).start(timeout=60)
    try:
        assert requests.get(f"{srv.url}/metrics", timeout=10).status_code == 404
        assert not _metrics_dir(srv.data_dir).exists()
    finally:
        srv.stop()


def test_a_killed_worker_keeps_its_counts_and_a_new_run_starts_from_zero(tmp_path: Path) -> None:
    """A worker killed with SIGKILL (and replaced) keeps what it flushed in the totals, its
    live gauges leave the sums; the next server run removes the old run's files."""
    srv = PortwayServer(tmp_path, workers=2).start(timeout=60)
    try:
        url = f"{srv.url}/v2/docker-hosted/app/manifests/latest"
        for _ in range(20):
            assert requests.get(url, timeout=10).status_code == 404
        counted = key("portway_http_requests_total", route="manifest", method="GET", status="404")
        settle(srv.url, {counted: 20})
        time.sleep(1.5)  # both workers flushed what they served
        runs = list(_metrics_dir(srv.data_dir).iterdir())
        assert len(runs) == 1
        pids = sorted({int(p) for p in re.findall(r"worker (\d+) listening on", srv.log())})
        assert len(pids) == 2, srv.log()[-2000:]
        victim = pids[0]
        assert (runs[0] / f"gauge_livesum_{victim}.db").exists()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(set(re.findall(r"worker (\d+) listening on", srv.log()))) < 3:
            assert time.monotonic() < deadline, srv.log()[-2000:]
            time.sleep(0.2)
        samples = settle(srv.url, {counted: 20})
        assert value(samples, "portway_http_in_flight_requests") >= 1  # this scrape only
        assert not (runs[0] / f"gauge_livesum_{victim}.db").exists()
        assert (runs[0] / f"counter_{victim}.db").exists()
        srv.stop()
        srv.start(timeout=60)
        assert value(scrape(srv.url), counted[0], **dict(counted[1])) == 0
        assert [p.name for p in _metrics_dir(srv.data_dir).iterdir()] != [runs[0].name]
        assert not runs[0].exists()
    finally:
        srv.stop()


def test_a_proxy_breaker_that_opens_shows_in_the_gauges(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there: every upstream request fails at once
    repos = [{"name": "hub", "type": "proxy", "remote_url": f"http://127.0.0.1:{dead}"}]
    srv = PortwayServer(tmp_path, repositories=repos).start(timeout=60)
    try:
        blocked = key("portway_proxy_upstream_blocked", repository="hub")
        assert settle(srv.url, {blocked: 0})
        for i in range(8):
            url = f"{srv.url}/repository/hub/v2/library/app{i}/manifests/latest"
            assert requests.get(url, timeout=30).status_code >= 400
        samples = settle(srv.url, {blocked: 1})
        assert value(samples, "portway_proxy_upstream_consecutive_failures", repository="hub") >= 5
    finally:
        srv.stop()
