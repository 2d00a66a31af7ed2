"""`workers = 2`: one upload served by both processes, and the process tree's lifecycle."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from push_support import MiB, Registry, children, group_members, manifest_for, proc_stat, sha256
from support.server import PortwayServer

pytestmark = pytest.mark.slow

# "... portway.access[<pid>]: 127.0.0.1 [...] "PATCH /repository/.../uploads/<uuid> HTTP/1.1" 202"
_ACCESS_RE = re.compile(
    r"portway\.access\[(\d+)\]: .*\"(PATCH|PUT|POST|GET|HEAD) (\S+) HTTP/1\.1\" (\d+)"
)
_UUID_RE = re.compile(r"/blobs/uploads/([0-9a-f-]{36})")
_WORKER_RE = re.compile(r"worker (\d+) listening on")


def _worker_pids(server: PortwayServer, count: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = sorted({int(p) for p in _WORKER_RE.findall(server.log())})
        live = [p for p in pids if proc_stat(p) is not None]
        if len(live) >= count:
            return live
        time.sleep(0.05)
    raise AssertionError(f"{count} workers did not report:\n{server.log()[-3000:]}")


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _port_free(port: int) -> bool:
    """Nothing listens: a plain bind (no SO_REUSEPORT, which would share a live socket)
    succeeds and a connect is refused."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


def _two_workers(root: Path) -> Iterator[PortwayServer]:
    # started by hand for a longer start timeout: on a busy 2-core machine three Python
    # processes importing the app (parent and two spawned workers) take 15-20 s
    server = PortwayServer(root / "portway", workers=2, server={"log_level": "debug"})
    yield server.start(60)
    server.stop()
    print(server.log()[-3000:])


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[PortwayServer]:
    """A server of its own, for a test that stops or kills it."""
    yield from _two_workers(tmp_path)


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    """One server for the tests that leave it running (its log is theirs to read: only the
    chunked-upload test sends it requests)."""
    yield from _two_workers(tmp_path_factory.mktemp("workers"))


def test_chunked_uploads_span_both_workers(serving: PortwayServer) -> None:
    server = serving
    workers = _worker_pids(server, 2)
    reg = Registry(server.repository_url())
    rng = random.Random(7)
    image = "workers/spread"
    layers: list[bytes] = []
    for n in range(12):
        blob = rng.randbytes(rng.randint(1 * MiB, 3 * MiB))
        cuts = sorted(rng.sample(range(1, len(blob)), 5))
        chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]
        reply = reg.upload_chunked(image, chunks, sha256(blob))
        assert reply.status == 201, (n, reply.status, reply.body[:300])
        assert reply.header("Docker-Content-Digest") == sha256(blob)
        layers.append(blob)
    config = b'{"architecture":"amd64","os":"linux"}'
    assert reg.upload_monolithic(image, sha256(config), config, len(config)).status == 201
    manifest = manifest_for(config, layers)
    put = reg.put_manifest(image, "v1", manifest)
    assert put.status == 201, put.body[:300]

    # the pull, each request on a new connection too
    got = reg.get_manifest(image, "v1")
    assert got.status == 200 and got.body == manifest
    assert got.header("Docker-Content-Digest") == sha256(manifest)
    for blob in layers:
        status, hexdigest, length = reg.pull_blob(image, sha256(blob))
        assert (status, length) == (200, len(blob))
        assert f"sha256:{hexdigest}" == sha256(blob)

    # who served what: the access log names the process of every request
    served: dict[str, set[int]] = defaultdict(set)
    pids_seen: set[int] = set()
    for pid, method, path, status in _ACCESS_RE.findall(server.log()):
        pids_seen.add(int(pid))
        m = _UUID_RE.search(path)
        if m and method in ("PATCH", "PUT"):
            assert status == ("202" if method == "PATCH" else "201"), (method, path, status)
            served[m.group(1)].add(int(pid))
    assert pids_seen == set(workers), (pids_seen, workers)
    assert len(served) == 12
    spanning = [u for u, pids in served.items() if len(pids) == 2]
    # 6 requests per upload, spread over the workers accepting from the shared listener: all
    # on one worker for every upload would mean connections are not spread at all
    assert spanning, f"no upload was served by both workers: {dict(served)}"


def test_workers_are_children_and_stop_with_sigterm(two_workers: PortwayServer) -> None:
    server = two_workers
    parent = server.pid
    assert parent is not None
    workers = _worker_pids(server, 2)
    assert set(workers) <= set(children(parent)), (workers, children(parent))
    assert parent not in workers

    os.kill(parent, signal.SIGTERM)  # the parent alone, as an init system would
    assert server.process.proc is not None
    server.process.proc.wait(15)
    _wait_for("workers to exit", lambda: all(proc_stat(p) is None for p in workers))
    _wait_for("the process group to empty", lambda: not group_members(parent))
    _wait_for("the port to be free", lambda: _port_free(server.port))


def test_sigkill_of_the_parent_takes_the_workers_down(two_workers: PortwayServer) -> None:
    server = two_workers
    parent = server.pid
    assert parent is not None
    workers = _worker_pids(server, 2)

    os.kill(parent, signal.SIGKILL)  # only the parent: the workers must not outlive it
    assert server.process.proc is not None
    server.process.proc.wait(5)
    _wait_for("workers to die", lambda: all(proc_stat(p) is None for p in workers), 5.0)
    _wait_for("the process group to empty", lambda: not group_members(parent), 5.0)
    _wait_for("the port to be free", lambda: _port_free(server.port), 5.0)

    # and the same data directory serves again on the same port
    server.start(60)
    assert Registry(server.repository_url()).request("GET", "/v2/").status == 200


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_server_on_a_taken_port_fails_instead_of_sharing_it(
    serving: PortwayServer, workers: int
) -> None:
    """A second server on the same port must refuse to start, never share the port (with
    SO_REUSEPORT it would silently take half the first one's connections)."""
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "portway",
            "serve",
            "--config",
            str(serving.config_path),
            "--workers",
            str(workers),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=serving.root,
    )
    assert second.returncode != 0, second.stderr[-2000:]
    assert "in use" in (second.stdout + second.stderr).lower(), second.stderr[-2000:]
    assert serving.alive()
