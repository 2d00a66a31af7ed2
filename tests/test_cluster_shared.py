"""Two real `portway serve` processes on one PostgreSQL database, separate data directories
and no key folder in common: they sign and verify with the same keys (from the database), and
both write their audit records to the database, exported together by `portway audit export`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from support.postgres import Postgres
from support.server import PortwayServer


@pytest.fixture(scope="module")
def nodes(
    postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[PortwayServer]]:
    url = postgres.create_database("cluster_shared")
    root = tmp_path_factory.mktemp("shared")
    started = [
        PortwayServer(root / f"node{i}", security={"enabled": True}, database_url=url)
        for i in (1, 2)
    ]
    try:
        started[0].start(60)  # creates the admin account and the first signing key
        started[1].start(60)  # finds both in the database
        yield started
    finally:
        for node in started:
            node.stop()
        postgres.drop_database(url)


def admin(nodes: list[PortwayServer]) -> tuple[str, str]:
    password = nodes[0].admin_password()
    assert password
    return "admin", password


def test_a_token_from_one_node_is_honoured_by_the_other(nodes: list[PortwayServer]) -> None:
    answer = requests.get(
        f"{nodes[0].url}/v2/token",
        params={"service": "portway", "scope": "repository:docker-hosted/app:pull"},
        auth=admin(nodes),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    bearer = {"Authorization": f"Bearer {answer.json()['token']}"}
    for node in nodes:  # authorized (the image does not exist yet), on either node
        tags = requests.get(
            f"{node.url}/v2/docker-hosted/app/tags/list", headers=bearer, timeout=30
        )
        assert tags.status_code == 404, (node.host, tags.status_code, tags.text)
        assert tags.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    assert not list((nodes[1].data_dir / "keys").glob("*.pem"))  # none made on node 2


def test_every_nodes_audit_records_are_exported_together(nodes: list[PortwayServer]) -> None:
    user, password = admin(nodes)
    marker = f"nobody-{time.time_ns()}"
    wrong = requests.get(f"{nodes[1].url}/v2/token", params={"service": "portway"},
                         auth=(marker, "wrong"), timeout=60)  # fmt: skip
    assert wrong.status_code == 401
    right = requests.get(f"{nodes[0].url}/v2/token", params={"service": "portway"},
                         auth=(user, password), timeout=60)  # fmt: skip
    assert right.status_code == 200
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run(
            [sys.executable, "-m", "portway", "audit", "export", "--config",
             str(nodes[0].config_path)],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        records = [json.loads(line) for line in out.splitlines()]
        failed = [r for r in records if r["principal"] == marker and r["outcome"] != "success"]
        nodes_seen = {r["node"] for r in records if r["event"] == "login"}
        if (failed and len(nodes_seen) == 2) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert failed, "node 2's failed login is not in the export of node 1's configuration"
    assert len(nodes_seen) == 2, nodes_seen
    assert all("wrong" not in json.dumps(r) for r in records)  # no password in the log
    assert not (nodes[0].data_dir / "audit.log").exists()


def test_a_key_rotated_through_one_nodes_config_signs_and_verifies_everywhere(
    nodes: list[PortwayServer],
) -> None:
    rotated = subprocess.run(
        [sys.executable, "-m", "portway", "key", "rotate", "--config", str(nodes[1].config_path)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    params = {"service": "portway", "scope": "repository:docker-hosted/app:pull"}
    deadline = time.monotonic() + 5
    while True:  # each node's ring looks for a change once a second
        tokens = [
            requests.get(f"{n.url}/v2/token", params=params, auth=admin(nodes), timeout=60)
            for n in nodes
        ]
        kids = {_kid(t.json()["token"]) for t in tokens}
        if (len(kids) == 1 and next(iter(kids)) in rotated) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(kids) == 1 and next(iter(kids)) in rotated, (kids, rotated)
    for token in tokens:
        bearer = {"Authorization": f"Bearer {token.json()['token']}"}
        for node in nodes:
            url = f"{node.url}/v2/docker-hosted/app/tags/list"
            assert requests.get(url, headers=bearer, timeout=30).status_code == 404


def _kid(token: str) -> str:
    import base64

    header = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def test_a_repository_created_on_one_node_is_served_by_the_other_within_a_second(
    nodes: list[PortwayServer],
) -> None:
    examples = Path(__file__).parent / "data" / "nexus-docker-examples.json"
    body = json.loads(examples.read_text())["hosted"]
    body.update(name="made-on-node1")
    body["docker"].update(httpPort=None, httpsPort=None, subdomain=None)
    session = requests.Session()
    session.auth = admin(nodes)
    made = session.post(
        f"{nodes[0].url}/service/rest/v1/repositories/docker/hosted", json=body, timeout=60
    )
    assert made.status_code == 201, made.text
    created = time.monotonic()
    url = f"{nodes[1].url}/repository/made-on-node1/v2/"  # node 2's registry, not the API
    while session.get(url, timeout=30).status_code != 200:
        assert time.monotonic() - created < 1.0, "node 2 does not serve the new repository"
        time.sleep(0.02)
