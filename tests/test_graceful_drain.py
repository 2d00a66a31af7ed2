"""SIGTERM drains a worker: it stops accepting, `/readyz` answers 503 to whoever still asks it,
in-flight requests finish (within `[server] drain_timeout`), then it exits 0. SIGUSR2 restarts
two workers one at a time under load with no failed client request (ADR 18)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable

import pytest

from drain_support import (
    BIG,
    PullStats,
    SlowDownload,
    holder_of,
    pull_loop,
    push_image,
)
from push_support import Registry
from support.server import PortwayServer
from support.workers import listening, wait_for

pytestmark = pytest.mark.slow


def _exit_status(server: PortwayServer, timeout: float) -> int:
    assert server.process.proc is not None
    return server.process.proc.wait(timeout)


def test_sigterm_finishes_a_download_answers_readyz_503_then_exits_0(
    start_portway: Callable[..., PortwayServer],
) -> None:
    server = start_portway(workers=1, server={"drain_timeout": 60})
    reg = Registry(server.repository_url(), timeout=60)
    _, _, big = push_image(reg, "drain/img")
    download = SlowDownload(reg, "drain/img", big)
    download.start()
    assert download.started_body.wait(30)

    # a kept-alive client (a load balancer) asking /readyz again and again
    answers: list[tuple[int, str, str]] = []
    prober = http.client.HTTPConnection(server.host.split(":")[0], server.port, timeout=30)

    def probe() -> None:
        while True:
            prober.request("GET", "/readyz")
            resp = prober.getresponse()
            body = resp.read().decode()
            answers.append((resp.status, resp.getheader("Connection") or "", body))
            if resp.will_close:
                return

    assert server.pid is not None
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    wait_for("the prober's first answer", lambda: bool(answers), 30)
    os.kill(server.pid, signal.SIGTERM)
    wait_for("the drain to begin", lambda: "draining: stopped accepting" in server.log(), 30)
    thread.join(30)
    assert not thread.is_alive()

    # answered 200 before, then one 503 "draining" with Connection: close, on the same connection
    assert answers[0][0] == 200, answers[0]
    status, connection, body = answers[-1]
    assert (status, connection.lower()) == (503, "close"), answers[-1]
    assert json.loads(body)["status"] == "draining"
    # no new connection is accepted (the only worker closed the listening socket)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    assert server.alive()  # still sending the blob

    download.go.set()
    download.join(120)
    assert download.error is None, download.error
    assert download.result == (200, big, BIG)
    assert _exit_status(server, 60) == 0
    assert re.search(r"drained in [\d.]+s: every request finished", server.log()), server.log()


def test_drain_timeout_bounds_a_download_that_stalls(
    start_portway: Callable[..., PortwayServer],
) -> None:
    server = start_portway(workers=1, server={"drain_timeout": 2})
    reg = Registry(server.repository_url(), timeout=60)
    _, _, big = push_image(reg, "drain/stall")
    download = SlowDownload(reg, "drain/stall", big)  # never told to go on: reads 1 MiB only
    download.start()
    assert download.started_body.wait(30)
    assert server.pid is not None
    os.kill(server.pid, signal.SIGTERM)
    began = time.monotonic()
    status = _exit_status(server, 60)
    took = time.monotonic() - began
    assert status == 0
    # 2 s of drain, plus the stop itself on a busy machine
    assert 1.5 < took < 20, took
    assert "drain_timeout (2s) passed with 1 connection(s) still busy" in server.log()
    download.go.set()
    download.join(30)
    assert download.result is None or download.result[2] < BIG  # cut off, never "complete"


def test_rolling_restart_of_two_workers_under_load_fails_no_request(
    start_portway: Callable[..., PortwayServer],
) -> None:
    server = start_portway(workers=2, server={"drain_timeout": 120})
    wait_for("two workers", lambda: len(listening(server)) >= 2, 60)
    old = listening(server)
    reg = Registry(server.repository_url(), timeout=60)
    manifest, layer, big = push_image(reg, "rolling/img")

    download = SlowDownload(reg, "rolling/img", big)
    download.start()
    assert download.started_body.wait(30)
    holder = holder_of(old, server.port, download.local_port())
    assert holder in old, (holder, old)

    stop = threading.Event()
    stats = [PullStats() for _ in range(5)]
    clients = [
        threading.Thread(
            target=pull_loop,
            args=(reg, "rolling/img", manifest, layer, stop, stats[n]),
            kwargs={"keep_alive": n >= 3},  # three on fresh connections, two kept alive
        )
        for n in range(5)
    ]
    for client in clients:
        client.start()
    try:
        time.sleep(1)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGUSR2)
        # the worker holding the download drains; the blob goes on and completes meanwhile
        wait_for(
            "the download's worker to drain",
            lambda: f"portway.server[{holder}]: draining: stopped accepting" in server.log(),
            300,
        )
        assert _alive(holder)
        download.go.set()
        download.join(120)
        wait_for("the rolling restart to end", lambda: "rolling restart done" in server.log(), 300)
        time.sleep(1)  # and pull a little more from the new workers
    finally:
        stop.set()
        for client in clients:
            client.join(60)

    assert download.error is None, download.error
    assert download.result == (200, big, BIG)
    errors = [e for s in stats for e in s.errors]
    served = sum(s.ok for s in stats)
    print(f"rolling restart: {served} requests served, {len(errors)} failed")
    assert errors == [], errors[:5]
    assert served > 50
    assert all(s.ok > 0 for s in stats)
    assert not any(_alive(p) for p in old)
    new = listening(server)[2:]
    assert len(new) == 2 and all(_alive(p) for p in new), new
    log = server.log()
    assert "was killed" not in log and "did not stop" not in log, log[-4000:]
    assert server.stop(60) == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_kept_alive_connection_goes_on_after_a_blob_download(
    start_portway: Callable[..., PortwayServer],
) -> None:
    # The rolling restart's kept-alive clients found this: the access-log middleware sent a
    # blob's file, aiohttp then prepared it a second time and dropped the connection.
    server = start_portway(workers=1)
    reg = Registry(server.repository_url(), timeout=60)
    manifest, layer, _ = push_image(reg, "keepalive/img")
    stop = threading.Event()
    stats = PullStats()
    client = threading.Thread(
        target=pull_loop,
        args=(reg, "keepalive/img", manifest, layer, stop, stats),
        kwargs={"keep_alive": True},
    )
    client.start()
    wait_for("40 answers", lambda: stats.ok + len(stats.errors) >= 40, 60)
    stop.set()
    client.join(60)
    assert stats.errors == [], stats.errors[:3]
    assert "Unhandled exception" not in server.log()
