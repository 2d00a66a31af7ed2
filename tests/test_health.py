"""Health routes of a real `portway serve` (two workers) while its stores really fail.

Faults are made for real, as root: an immutable blob store folder or database file
(`chattr +i`: writes refused even for root), a garbage file bind-mounted over the database
(a new connection cannot read it), a second connection holding SQLite's write lock, and a
small tmpfs under the blob store filled to the last byte. Each flips the answers within two
check intervals and back once the fault is gone.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from support.server import PortwayServer
from support.smallfs import SmallDisk

INTERVAL = 1.0
# A change shows at the next check (one interval, plus the check's own time): two intervals,
# and a second for polling two workers on a loaded machine.
FLIP_WITHIN = 2 * INTERVAL + 1.0
PATHS = (
    "/livez",
    "/startupz",
    "/readyz",
    "/service/rest/v1/status",
    "/service/rest/v1/status/writable",
)
Expect = dict[str, int]
HEALTHY: Expect = dict.fromkeys(PATHS, 200)


def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these faults (chattr, mount) need root")


def answers(srv: PortwayServer) -> Expect:
    return {p: requests.get(srv.url + p, timeout=10).status_code for p in PATHS}


def wait_for(srv: PortwayServer, expect: Expect, within: float = FLIP_WITHIN) -> float:
    """Seconds until every path answers as expected 6 times running (both workers)."""
    start = time.monotonic()
    streak = 0
    seen: Expect = {}
    while time.monotonic() - start < within + 10:
        seen = answers(srv)
        streak = streak + 1 if seen == expect else 0
        if streak >= 6:
            took = time.monotonic() - start
            assert took <= within + 0.6, f"took {took:.1f} s (more than {within} s): {seen}"
            return took
        time.sleep(0.05)
    raise AssertionError(f"expected {expect}, still {seen}")


def chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    _root()
    srv = PortwayServer(
        tmp_path_factory.mktemp("health"),
        workers=2,
        server={"health_check_interval": INTERVAL},
        connectors=[{"repository": "docker-hosted"}],
    ).start(timeout=60)
    try:
        yield srv
    finally:
        srv.stop()


def test_healthy_node_answers_every_route(server: PortwayServer) -> None:
    wait_for(server, HEALTHY)
    assert requests.get(server.url + "/service/rest/v1/status", timeout=10).content == b""
    ready = requests.get(server.url + "/readyz", timeout=10).json()
    assert ready["checks"]["database"] == {"reachable": True, "writable": True}
    # Health answers on connectors too (load balancers may target those ports).
    connector = f"http://127.0.0.1:{server.connector_port()}"
    assert requests.get(connector + "/readyz", timeout=10).status_code == 200


def _flips(
    server: PortwayServer, fault: Expect, make: Callable[[], None], undo: Callable[[], None]
) -> tuple[float, float]:
    wait_for(server, HEALTHY)
    try:
        make()
        down = wait_for(server, {**HEALTHY, **fault})
    finally:
        undo()
    up = wait_for(server, HEALTHY)
    return down, up


def test_unwritable_blob_store_is_not_ready_then_recovers(server: PortwayServer) -> None:
    storage = server.data_dir / "storage"
    fault = {"/readyz": 503, "/service/rest/v1/status/writable": 503}
    _flips(server, fault, lambda: chattr("+i", storage), lambda: chattr("-i", storage))


def test_failing_checks_are_named_in_the_answer(server: PortwayServer) -> None:
    storage = server.data_dir / "storage"
    chattr("+i", storage)
    try:
        wait_for(server, {**HEALTHY, "/readyz": 503, "/service/rest/v1/status/writable": 503})
        body = requests.get(server.url + "/readyz", timeout=10).json()
        assert body["status"] == "unavailable"
        blob = body["checks"]["blob_store"]
        assert blob["reachable"] is True and blob["writable"] is False
        assert "cannot write to the blob store" in blob["reason"]
        assert body["checks"]["database"]["writable"] is True
    finally:
        chattr("-i", storage)
    wait_for(server, HEALTHY)


def test_read_only_database_is_not_ready_then_recovers(server: PortwayServer) -> None:
    db = server.data_dir / "portway.db"
    fault = {"/readyz": 503, "/service/rest/v1/status/writable": 503}
    _flips(server, fault, lambda: chattr("+i", db), lambda: chattr("-i", db))


def test_unreadable_database_is_unavailable_then_recovers(server: PortwayServer) -> None:
    db = server.data_dir / "portway.db"
    garbage = server.root / "not-a-database"
    garbage.write_bytes(b"this is not an SQLite file " * 200)
    fault = {
        "/readyz": 503,
        "/service/rest/v1/status": 503,
        "/service/rest/v1/status/writable": 503,
    }

    def mount() -> None:
        subprocess.run(["mount", "--bind", str(garbage), str(db)], check=True, capture_output=True)

    def unmount() -> None:
        subprocess.run(["umount", str(db)], check=False, capture_output=True)

    _flips(server, fault, mount, unmount)


def test_held_write_lock_is_ready_but_not_writable(server: PortwayServer) -> None:
    holder = sqlite3.connect(server.data_dir / "portway.db", isolation_level=None, timeout=10)
    fault = {"/service/rest/v1/status/writable": 503}
    try:
        _flips(server, fault, lambda: holder.execute("BEGIN IMMEDIATE"), holder.rollback)
    finally:
        holder.close()


def test_full_blob_store_is_ready_but_not_writable(tmp_path: Path) -> None:
    _root()
    srv = PortwayServer(tmp_path, workers=2, server={"health_check_interval": INTERVAL})
    disk = SmallDisk(srv.data_dir / "storage", "1m")
    disk.mount()
    try:
        srv.start(timeout=60)
        try:
            fault = {"/service/rest/v1/status/writable": 503}
            _flips(srv, fault, disk.fill, disk.free)
        finally:
            srv.stop()
    finally:
        disk.unmount()
