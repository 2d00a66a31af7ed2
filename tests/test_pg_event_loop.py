"""On PostgreSQL the event loop never waits for the database (issue 11; ADR 21, ADR 29).

A real server on a real PostgreSQL 15, security on, with a watcher on every SQL statement
(tests/support/loop_site/sitecustomize.py, loaded through PYTHONPATH): pushes, pulls with
Basic, bearer tokens and anonymously, listings, search, the admin API, user and repository
changes and the checks that follow them run no statement on a thread running the event
loop. And while another connection holds the user and role tables locked, a login waits but
requests that need none of them (a pull with a token seen before, once the security
generation is due again, and /livez) are answered at once.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from portway.auth.state import GENERATION_CHECK
from support.security import Client, admin_client, make_image, push_image
from support.server import PortwayServer

SITE = Path(__file__).parent / "support" / "loop_site"
REPOSITORIES = (
    {"name": "docker-hosted", "type": "hosted", "path_routing": True},
    {"name": "public", "type": "hosted", "path_routing": True, "anonymous_pull": True},
)
QUICK = 1.0  # seconds: an answer from a loop that is not waiting for the database
BULK = "/api/v1/repositories/docker-hosted/images/app/tags/delete"
OCI = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
AUTH_TABLES = "users, user_roles, roles, role_privileges, role_includes, security_state"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[PortwayServer]:
    root = tmp_path_factory.mktemp("pg-loop")
    node = PortwayServer(
        root / "node", database_url=postgres_url, security={"enabled": True},
        repositories=REPOSITORIES,
        env={"PYTHONPATH": os.pathsep.join(filter(None, (str(SITE), os.environ.get("PYTHONPATH")))),
             "PORTWAY_SQL_WATCH": str(root / "sql.jsonl")},
    ).start()  # fmt: skip
    yield node
    node.stop()


def statements(server: PortwayServer) -> list[dict[str, Any]]:
    path = server.root.parent / "sql.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_no_statement_runs_on_the_event_loop(server: PortwayServer) -> None:
    password = server.admin_password() or ""
    seeding = admin_client(server)  # Basic on every request
    for repo in ("docker-hosted", "public"):
        assert push_image(seeding, f"{repo}/app", "v1", make_image(repo)).status_code == 201
    bearer = Client(server.url, user="admin", password=password)  # the token dance
    anonymous = Client(server.url)
    admin = requests.Session()
    admin.auth = ("admin", password)

    def everything() -> None:
        assert seeding.get_manifest("docker-hosted/app", "v1").status_code == 200
        assert bearer.get_manifest("docker-hosted/app", "v1").status_code == 200
        assert bearer.request("GET", "/v2/docker-hosted/app/tags/list").status_code == 200
        assert anonymous.get_manifest("public/app", "v1").status_code == 200
        assert requests.get(f"{server.url}/v2/", timeout=30).status_code == 401
        assert requests.get(f"{server.url}/v1/search?q=app", timeout=30).status_code == 401
        assert admin.get(f"{server.url}/v1/search?q=app", timeout=30).status_code == 200
        assert admin.get(f"{server.url}/v2/_catalog", timeout=30).status_code == 200
        for path in (
            "/service/rest/v1/components?repository=docker-hosted",
            "/service/rest/v1/search?name=app",
            "/api/v1/repositories/docker-hosted/images/app/tags",
            "/api/v1/repositories",
            "/api/v1/jobs",
            "/service/rest/v1/tasks",
            "/api/v1/connectors",
            "/api/v1/hosts",
        ):
            assert admin.get(f"{server.url}{path}", timeout=30).status_code == 200, path
        preview = admin.post(f"{server.url}{BULK}", json={"match": "v*", "preview": True},
                             timeout=30)  # fmt: skip
        assert preview.status_code == 200 and preview.json()["tags"], preview.text

    everything()
    # A user and a repository change: the security generation and the repositories' set
    # move, and the next requests (after GENERATION_CHECK) read them again.
    user = {"userId": "dev", "firstName": "D", "lastName": "E", "emailAddress": "d@e.org",
            "password": "dev-Secret-1", "status": "active", "roles": []}  # fmt: skip
    made = admin.post(f"{server.url}/service/rest/v1/security/users", json=user, timeout=30)
    assert made.status_code == 200, made.text
    repo = {"name": "later", "type": "hosted", "path_routing": True}
    assert admin.post(f"{server.url}/api/v1/repositories", json=repo, timeout=30).status_code == 201
    time.sleep(GENERATION_CHECK + 0.5)
    everything()
    pushed = push_image(seeding, "later/app", "v1", make_image("later"))
    assert pushed.status_code == 201, pushed.text
    assert push_image(seeding, "docker-hosted/app", "old", make_image("old")).status_code == 201
    gone = admin.post(f"{server.url}{BULK}", json={"tags": ["old"], "preview": False}, timeout=30)
    assert gone.status_code == 200 and gone.json()["deleted"] == 1, gone.text
    time.sleep(GENERATION_CHECK + 0.5)
    everything()

    seen = statements(server)
    assert len(seen) > 50, "the watcher saw no statements: it did not load"
    on_loop = [s for s in seen if s["on_loop"]]
    stacks = {" <- ".join(reversed(s["stack"][-6:])) for s in on_loop}
    assert not on_loop, "\n".join(sorted(stacks))


def test_a_login_waiting_for_locked_tables_holds_up_no_other_request(
    server: PortwayServer, postgres_url: str
) -> None:
    password = server.admin_password() or ""
    seeding = admin_client(server)
    assert push_image(seeding, "docker-hosted/app", "v2", make_image("v2")).status_code == 201
    user = {"userId": "waiter", "firstName": "W", "lastName": "A", "emailAddress": "w@a.org",
            "password": "waiter-Secret-1", "status": "active", "roles": []}  # fmt: skip
    made = requests.post(f"{server.url}/service/rest/v1/security/users", json=user,
                         auth=("admin", password), timeout=30)  # fmt: skip
    assert made.status_code == 200, made.text
    puller = Client(server.url, user="admin", password=password)
    assert puller.get_manifest("docker-hosted/app", "v2").status_code == 200  # token verified
    locker = psycopg.connect(postgres_url)
    login: dict[str, Any] = {}

    def log_in() -> None:
        started = time.monotonic()
        login["answer"] = requests.get(
            f"{server.url}/v2/token", params={"service": "portway"},
            auth=("waiter", "waiter-Secret-1"), timeout=60,  # a login not checked before
        )  # fmt: skip
        login["seconds"] = time.monotonic() - started

    try:
        locker.execute(f"LOCK TABLE {AUTH_TABLES} IN ACCESS EXCLUSIVE MODE")
        time.sleep(GENERATION_CHECK + 0.2)  # the security generation is due again
        waiting = threading.Thread(target=log_in, daemon=True)
        waiting.start()
        times = []
        for _ in range(5):
            started = time.monotonic()
            got = puller.raw("GET", "/v2/docker-hosted/app/manifests/v2", headers=OCI)
            assert got.status_code == 200, got.text
            assert requests.get(f"{server.url}/livez", timeout=30).status_code == 200
            times.append(time.monotonic() - started)
            time.sleep(0.2)
        assert max(times) < QUICK, times
        assert waiting.is_alive(), login  # the login still waits for the users table
    finally:
        locker.rollback()  # the lock goes
        locker.close()
    waiting.join(60)
    assert login["answer"].status_code == 200, login["answer"].text
    assert login["answer"].json()["token"]
