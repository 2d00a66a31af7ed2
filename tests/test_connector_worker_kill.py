"""A connector made through the admin API outlives the workers that served it: `kill -9` of
one worker (not the parent) while clients pull through the connector's port; the parent
starts a replacement, which is handed the connector's socket and serves it (a pull on a
connection the replacement accepted, found through /proc; its own view of the connector says
`listening`); then the other original worker is killed too, and the port, served only by
replacements now, still answers. Only requests the killed worker held may fail."""

from __future__ import annotations

import http.client
import random
import threading
import time
from base64 import b64encode
from collections.abc import Iterator

import pytest
import requests

from admin_api_support import admin_session, start_server
from drain_support import holder_of
from push_support import MiB, Registry, manifest_for, sha256
from support.ports import free_port
from support.server import PortwayServer
from support.workers import Outcome, kill_worker, listening, pull_loop, wait_for

pytestmark = pytest.mark.slow

IMAGE = "app"
CLIENTS = 3


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    repositories = [{"name": "docker-hosted", "type": "hosted", "path_routing": True}]
    srv = start_server(tmp_path_factory.mktemp("connector-kill"), repositories=repositories)
    try:
        yield srv
    finally:
        srv.stop(30)


def _replacement(server: PortwayServer, known: set[int]) -> int:
    wait_for("a replacement worker to listen", lambda: bool(set(listening(server)) - known), 60)
    (pid,) = set(listening(server)) - known
    return pid


def _on_worker(port: int, pid: int, workers: list[int], headers: dict[str, str]
               ) -> http.client.HTTPConnection:  # fmt: skip
    """A kept-alive connection to `port` that worker `pid` accepted."""
    for _ in range(200):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/v2/", headers=headers)
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200
        assert conn.sock is not None
        if holder_of(workers, port, int(conn.sock.getsockname()[1])) == pid:
            return conn
        conn.close()
    raise AssertionError(f"no connection to port {port} reached worker {pid}")


def test_an_api_connector_is_served_by_the_replacement_of_a_killed_worker(
    server: PortwayServer,
) -> None:
    wait_for("two workers", lambda: len(listening(server)) >= 2, 60)
    first, second = listening(server)[:2]
    admin = admin_session(server)
    port = free_port()
    listen = f"127.0.0.1:{port}"
    made = admin.post(f"{server.url}/api/v1/connectors",
                      json={"listen": listen, "repository": "docker-hosted"})  # fmt: skip
    assert made.status_code == 201, made.text
    auth = b64encode(f"admin:{server.admin_password()}".encode()).decode()
    headers = {"Authorization": f"Basic {auth}"}
    reg = Registry(f"http://{listen}", timeout=30, headers=headers)
    wait_for("the connector to answer", lambda: reg.request("GET", "/v2/").status == 200, 10)
    blob = random.Random(28).randbytes(MiB)
    config = b'{"architecture":"amd64","os":"linux"}'
    for data in (blob, config):  # pushed through the connector's port
        assert reg.upload_monolithic(IMAGE, sha256(data), data, len(data)).status == 201
    manifest = manifest_for(config, [blob])
    assert reg.put_manifest(IMAGE, "v1", manifest).status == 201

    stop = threading.Event()
    results: list[list[Outcome]] = [[] for _ in range(CLIENTS)]
    threads = [
        threading.Thread(target=pull_loop, args=(reg, IMAGE, manifest, blob, stop, results[n]),
                         kwargs={"ping": True})
        for n in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    kills: list[float] = []
    try:
        time.sleep(1)
        kills.append(kill_worker(first))
        replacement = _replacement(server, {first, second})
        line = next(x for x in server.log().splitlines() if f"worker {replacement} listening" in x)
        assert f"http:{port}" in line, line  # started with the connector's socket

        # A pull on a connection the replacement accepted, and its own view of the connector.
        workers = [second, replacement]
        conn = _on_worker(port, replacement, workers, headers)
        try:
            conn.request("GET", f"/v2/{IMAGE}/blobs/{sha256(blob)}", headers=headers)
            answer = conn.getresponse()
            assert (answer.status, sha256(answer.read())) == (200, sha256(blob))
        finally:
            conn.close()
        conn = _on_worker(server.port, replacement, workers, headers)
        try:
            conn.request("GET", f"/api/v1/connectors/{listen}", headers=headers)
            answer = conn.getresponse()
            seen = answer.read()
            assert answer.status == 200, seen
            assert b'"state": "listening"' in seen or b'"state":"listening"' in seen, seen
        finally:
            conn.close()

        # The other original worker too: now only replacements serve the port.
        kills.append(kill_worker(second))
        last = _replacement(server, {first, second, replacement})
        time.sleep(1)
        assert set(listening(server)) - {first, second} == {replacement, last}
        assert reg.request("GET", "/v2/").status == 200
        assert reg.get_manifest(IMAGE, "v1").body == manifest
        time.sleep(1)  # and the clients go on a little with both replacements
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    outcomes = [o for slot in results for o in slot]
    failed = [o for o in outcomes if o.error]
    # Only what a killed worker held may fail: a request started before its death, at most one
    # per client per kill; every request started after the last kill answered.
    assert len(failed) <= CLIENTS * len(kills), [o.error for o in failed][:10]
    assert all(any(k - 10 < o.started < k for k in kills) for o in failed), [
        (o.error, [round(k - o.started, 2) for k in kills]) for o in failed
    ]
    after = [o for o in outcomes if o.started >= kills[-1]]
    assert len(after) > 10, len(after)
    print(f"{len(outcomes)} requests through the connector, {len(failed)} failed at a kill")
    assert server.alive()
    assert requests.get(f"http://{listen}/v2/", headers=headers, timeout=10).status_code == 200
