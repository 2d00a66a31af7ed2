"""Signing keys on a real full file system: the key folder is a small tmpfs filled to the last
page. Neither the first token request of a fresh install nor `portway key rotate` may leave a
half-written key behind; once space is freed and the server restarted, logins work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from support.security import cli
from support.server import PortwayServer
from support.smallfs import SmallDisk

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[PortwayServer, SmallDisk]]:
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root")
    srv = PortwayServer(tmp_path / "srv", security={"enabled": True})
    disk = SmallDisk(srv.data_dir / "keys", "64k", mode="0700")
    disk.mount()
    try:
        srv.start()
        yield srv, disk
    finally:
        srv.stop()
        disk.unmount()
        print(srv.log()[-3000:])


def token(srv: PortwayServer) -> requests.Response:
    return requests.get(
        f"{srv.url}/v2/token",
        params={"service": "portway"},  # as docker login asks: no scope
        auth=("admin", srv.admin_password() or ""),
        timeout=30,
    )


def login_works(srv: PortwayServer) -> None:
    answer = token(srv)
    assert answer.status_code == 200, answer.text
    ping = requests.get(
        f"{srv.url}/v2/",
        headers={"Authorization": f"Bearer {answer.json()['token']}"},
        timeout=10,
    )
    assert ping.status_code == 200, ping.text


def key_files(disk: SmallDisk) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in disk.path.iterdir() if p.name != "filler"}


def test_first_token_on_full_disk_then_recovers(
    server: tuple[PortwayServer, SmallDisk],
) -> None:
    srv, disk = server
    assert key_files(disk) == {}  # a fresh install: no key yet
    disk.fill()
    refused = token(srv)
    assert refused.status_code == 503, refused.text
    error = refused.json()["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    assert "signing key" in error["message"] and "No space left" in error["message"]
    assert key_files(disk) == {}  # nothing half-written left behind

    disk.free()
    srv.restart()
    login_works(srv)
    pems = [name for name in key_files(disk) if name.endswith(".pem")]
    assert len(pems) == 1


def test_key_rotate_on_full_disk_leaves_the_ring_then_recovers(
    server: tuple[PortwayServer, SmallDisk],
) -> None:
    srv, disk = server
    login_works(srv)  # the first key is made
    before = key_files(disk)
    assert len([n for n in before if n.endswith(".pem")]) == 1 and "current" in before
    disk.fill()
    rotated = cli(srv, "key", "rotate", check=False)
    assert rotated.returncode == 1, rotated.stdout + rotated.stderr
    assert "No space left" in rotated.stderr and "unchanged" in rotated.stderr
    assert "Traceback" not in rotated.stderr
    assert key_files(disk) == before  # same files, same bytes: the ring is as it was
    login_works(srv)

    disk.free()
    srv.restart()
    login_works(srv)
    rotated = cli(srv, "key", "rotate")
    kid = rotated.stdout.strip()
    assert (disk.path / "current").read_text().strip() == kid
    login_works(srv)
