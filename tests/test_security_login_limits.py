"""Failed-login limits with two workers: the counts live in the database, so every worker
answers the same; a stranger guessing at `admin` from one address cannot lock admin out from
another; `portway user unlock` lets a locked user in at once.

Addresses are told apart by X-Forwarded-For from 127.0.0.1, a trusted proxy by default.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from support.security import cli
from support.server import PortwayServer

PER_USER_AND_ADDRESS = 4
PER_ADDRESS = 7
ROUNDS = 12  # new connections each: both workers answer some of them

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    srv = PortwayServer(
        tmp_path_factory.mktemp("login-limits"),
        workers=2,
        server={"log_level": "debug"},  # the access log names the worker that answered
        security={
            "enabled": True,
            "login_max_failures": PER_USER_AND_ADDRESS,
            "login_max_failures_per_address": PER_ADDRESS,
            "login_failure_window": 300,
        },
    )
    try:
        srv.start(timeout=60)  # two workers on a busy machine
        yield srv
    finally:
        srv.stop()
        print(srv.log()[-3000:])


def login(srv: PortwayServer, address: str, user: str, password: str) -> int:
    with requests.Session() as fresh:  # a new connection: any worker may answer
        answer = fresh.get(
            f"{srv.url}/v2/token",
            params={"service": "portway"},
            auth=(user, password),
            headers={"X-Forwarded-For": address, "Connection": "close"},
            timeout=30,
        )
    if answer.status_code == 429:
        assert answer.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert 0 < int(answer.headers["Retry-After"]) <= 300
    return answer.status_code


def workers_that_answered(srv: PortwayServer) -> set[str]:
    return set(re.findall(r"portway\.access\[(\d+)\]: .*GET /v2/token", srv.log()))


def admin(srv: PortwayServer) -> tuple[str, str]:
    return "admin", srv.admin_password() or ""


def test_a_stranger_cannot_lock_admin_out(server: PortwayServer) -> None:
    stranger, office = "203.0.113.5", "198.51.100.7"
    user, password = admin(server)
    answers = [login(server, stranger, user, f"guess-{i}") for i in range(ROUNDS)]
    # Exactly the allowance is checked; from then on every worker refuses: no 401/429 flapping.
    assert answers == [401] * PER_USER_AND_ADDRESS + [429] * (ROUNDS - PER_USER_AND_ADDRESS)
    assert [login(server, stranger, user, password) for _ in range(4)] == [429] * 4
    # admin, from anywhere else, logs in on either worker.
    assert [login(server, office, user, password) for _ in range(6)] == [200] * 6

    assert len(workers_that_answered(server)) == 2  # both workers took part

    unlocked = cli(server, "user", "unlock", "admin")
    assert "unlocked admin" in unlocked.stdout
    assert [login(server, stranger, user, password) for _ in range(4)] == [200] * 4


def test_an_address_guessing_at_many_users_is_locked(server: PortwayServer) -> None:
    spray, elsewhere = "192.0.2.9", "192.0.2.10"
    user, password = admin(server)
    answers = [login(server, spray, f"user{i}", "x") for i in range(ROUNDS)]
    assert answers == [401] * PER_ADDRESS + [429] * (ROUNDS - PER_ADDRESS)
    assert [login(server, spray, user, password) for _ in range(4)] == [429] * 4
    assert [login(server, elsewhere, user, password) for _ in range(4)] == [200] * 4

    assert cli(server, "user", "unlock", "nobody-such", check=False).returncode == 1
    cli(server, "user", "unlock", "admin", "--address", spray)
    assert [login(server, spray, user, password) for _ in range(4)] == [200] * 4
