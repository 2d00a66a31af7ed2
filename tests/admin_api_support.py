"""Shared pieces of the admin API tests: one real `portway serve` (security on, 2 workers) per
test module, an admin session, and a user who may pull and push but holds no admin privilege."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from support.server import PortwayServer

VIEWER = ("dev", "dev-password-1")
NEXUS = "/service/rest/v1"


def start_server(root: Path, **kwargs: Any) -> PortwayServer:
    kwargs.setdefault("workers", 2)
    kwargs.setdefault("security", {"enabled": True, "min_password_length": 8})
    return PortwayServer(root, **kwargs).start(timeout=90)


def admin_session(server: PortwayServer) -> requests.Session:
    password = server.admin_password()
    assert password
    session = requests.Session()
    session.auth = ("admin", password)
    return session


def add_viewer(server: PortwayServer, admin: requests.Session) -> None:
    """`dev`: every repository action on every repository, no admin privilege."""
    role = {
        "id": "developers",
        "name": "developers",
        "description": "pull and push",
        "privileges": ["nx-repository-view-docker-*-*"],
        "roles": [],
    }
    assert admin.post(f"{server.url}{NEXUS}/security/roles", json=role).status_code == 200
    user = {
        "userId": VIEWER[0],
        "firstName": "Dev",
        "lastName": "Eloper",
        "emailAddress": "dev@example.org",
        "password": VIEWER[1],
        "status": "active",
        "roles": ["developers"],
    }
    assert admin.post(f"{server.url}{NEXUS}/security/users", json=user).status_code == 200


def worker_of(response: requests.Response) -> str:
    """Each worker's request ids share a prefix (observe middleware)."""
    return response.headers["X-Request-Id"].rsplit("-", 1)[0]


def on_both_workers(
    ask: Callable[[], requests.Response],
    ok: Callable[[requests.Response], bool],
    within: float = 1.0,
    tries: int = 200,
) -> set[str]:
    """Ask on new connections until both workers answered; every answer from `within`
    seconds on must satisfy `ok`. Returns the workers seen. The kernel may hand many new
    connections in a row to one worker on a busy machine (CI once saw 40), hence the tries."""
    start = time.monotonic()
    seen: set[str] = set()
    while time.monotonic() - start < within:
        ask()
        time.sleep(0.02)
    for _ in range(tries):
        response = ask()
        assert ok(response), (response.status_code, response.text[:300])
        seen.add(worker_of(response))
        if len(seen) >= 2:
            break
    return seen


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    root = tmp_path_factory.mktemp("admin-api")
    srv = start_server(root)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def admin(server: PortwayServer) -> requests.Session:
    return admin_session(server)


def eventually(check: Callable[[], bool], within: float = 2.0) -> None:
    """User and role changes reach every worker within a second (auth/state.py)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)
