"""`docker search` and `podman search` with a term, security on: a logged-in user finds the
images of the repositories they may browse (and only those), on a shared host and through a
connector; without credentials nothing hidden shows.

Podman asks `/v1/search` without credentials and lists the catalog with them only when that
fails; docker sends the token of its login. Real clients, real server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from support.dockerd import Dockerd
from support.engines import ContainerStorage
from support.security import admin_client, cli, make_image, parse_challenge, push_image
from support.server import PortwayServer

ALICE = ("alice", "alice-Search-1")
IMAGES = {"docker-hosted": ["app", "tools/app-cli", "db"], "secret-hosted": ["app"]}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    srv = PortwayServer(
        tmp_path_factory.mktemp("security-search"),
        repositories=[
            {"name": "docker-hosted", "type": "hosted", "path_routing": True},
            {"name": "secret-hosted", "type": "hosted", "path_routing": True},
        ],
        connectors=[{"repository": "docker-hosted"}],
        security={"enabled": True},
    )
    srv.start()
    try:
        cli(srv, "role", "add", "dev", "--privilege", "docker-*:browse,read,add")
        cli(srv, "user", "add", ALICE[0], "--password", ALICE[1], "--role", "dev")
        admin = admin_client(srv)
        for repo, images in IMAGES.items():
            for image in images:
                pushed = push_image(admin, f"{repo}/{image}", "v1", make_image(f"{repo}/{image}"))
                assert pushed.status_code == 201, pushed.text
        yield srv
    finally:
        srv.stop()
        print(srv.log()[-3000:])


def connector(server: PortwayServer) -> str:
    return f"127.0.0.1:{server.connector_port(0)}"


def test_anonymous_search_is_asked_to_log_in(server: PortwayServer) -> None:
    """Without credentials, a search that would hide a repository answers the challenge."""
    for base in (server.url, f"http://{connector(server)}"):
        answer = requests.get(f"{base}/v1/search", params={"q": "app"}, timeout=10)
        assert answer.status_code == 401, answer.text
        assert answer.json()["errors"][0]["code"] == "UNAUTHORIZED"
        scheme, params = parse_challenge(answer.headers["WWW-Authenticate"])
        assert (scheme, params["realm"]) == ("bearer", f"{base}/v2/token")
    answer = requests.get(f"{server.url}/v1/search", params={"q": "app"}, auth=ALICE, timeout=10)
    assert sorted(r["name"] for r in answer.json()["results"]) == [
        "docker-hosted/app",
        "docker-hosted/tools/app-cli",
    ]


def test_podman_search_with_a_term(
    server: PortwayServer, container_storage: ContainerStorage
) -> None:
    podman = container_storage.podman

    def shown(term: str) -> list[str]:
        out = podman("search", "--tls-verify=false", "--format", "{{.Name}}", term)
        return sorted(out.stdout.split())

    shared, port = server.host, connector(server)
    assert shown(f"{shared}/app") == []  # not logged in: nothing hidden shows, no error
    podman("login", "--tls-verify=false", "-u", ALICE[0], "-p", ALICE[1], shared)
    podman("login", "--tls-verify=false", "-u", ALICE[0], "-p", ALICE[1], port)
    assert shown(f"{shared}/app") == [
        f"{shared}/docker-hosted/app",
        f"{shared}/docker-hosted/tools/app-cli",
    ]
    assert shown(f"{shared}/docker-hosted/db") == [f"{shared}/docker-hosted/db"]
    assert shown(f"{port}/app") == [f"{port}/app", f"{port}/tools/app-cli"]


def test_docker_search_with_a_term(server: PortwayServer, dockerd: Dockerd) -> None:
    docker = dockerd.docker

    def shown(term: str) -> list[str]:
        out = docker("search", "--format", "{{.Name}}", term)
        return sorted(out.stdout.split())

    shared, port = server.host, connector(server)
    anonymous = docker("search", f"{shared}/app", check=False)
    assert anonymous.returncode != 0 and "401" in anonymous.output, anonymous.output
    try:
        for host in (shared, port):
            docker("login", "-u", ALICE[0], "--password-stdin", host, input=ALICE[1])
        assert shown(f"{shared}/app") == ["docker-hosted/app", "docker-hosted/tools/app-cli"]
        assert shown(f"{shared}/docker-hosted/db") == ["docker-hosted/db"]
        assert shown(f"{port}/app") == ["app", "tools/app-cli"]
    finally:
        for host in (shared, port):
            docker("logout", host, check=False)
