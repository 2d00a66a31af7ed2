"""The isolation matrix of test_security_matrix.py, reduced, through nginx: a proxy in front
must not change who may do what, and challenges must name the proxy's address."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conceal_support import RecordingClient
from support.nginx import nginx_binary, start_nginx
from support.ports import free_port
from support.process import ManagedProcess
from support.security import parse_challenge, push_image
from support.server import PortwayServer
from test_security_matrix import (
    BASE,
    TEAMS,
    Env,
    add_principals,
    error_code,
    expect,
    host_name,
    run_cell,
    team_repositories,
)

NGINX_PRINCIPALS = ("alice", "bob", "anonymous")
NGINX_ACTIONS = ("pull", "push", "catalog", "replay")
NGINX_REPOS = ("team-a-hosted", "team-b-hosted")
NGINX_METHODS = ("connector", "host")


class NginxEnv(Env):
    def __init__(self, server: PortwayServer, http_port: int) -> None:
        self.server = server
        self.admin_password = server.admin_password() or ""
        self.ports = {r: server.connector_port(i) for i, r in enumerate(NGINX_REPOS)}
        self.http_port = http_port

    def client(self, principal: str, repo: str, method: str) -> RecordingClient:
        user, password = self.creds(principal)
        if method == "connector":
            base = f"http://127.0.0.1:{self.ports[repo]}"
            return RecordingClient(base, user=user, password=password)
        return RecordingClient(
            f"http://127.0.0.1:{self.http_port}",
            host=f"{host_name(repo)}:{self.http_port}",
            user=user,
            password=password,
        )


@pytest.fixture(scope="module")
def nginx_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxEnv]:
    nginx_binary()  # before anything is started
    root = tmp_path_factory.mktemp("security-nginx")
    repos = [r for r in team_repositories() if r["name"] in NGINX_REPOS]
    server = PortwayServer(
        root / "portway",
        repositories=repos,
        connectors=[{"repository": r, "served_by": "proxy"} for r in NGINX_REPOS],
        hosts=[{"name": host_name(r), "repository": r} for r in NGINX_REPOS],
        security={"enabled": True},
    )
    server.start()
    http_port = free_port()
    ports = [server.connector_port(i) for i in range(len(NGINX_REPOS))] + [http_port]
    options = ("--http-port", str(http_port), "--bind", "127.0.0.1")
    proxy: ManagedProcess | None = None
    try:
        proxy = start_nginx(server.config_path, root, ports, *options)
        add_principals(server)
        environment = NginxEnv(server, http_port)
        for team in TEAMS:
            seeder = environment.admin(f"team-{team}-hosted")
            assert push_image(seeder, "base", "v1", BASE[team]).status_code == 201
        yield environment
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
        conf = root / "nginx.conf"
        print(conf.read_text() if conf.exists() else "(no nginx config)")
        print(server.log()[-3000:])


@pytest.mark.parametrize("method", NGINX_METHODS)
@pytest.mark.parametrize("repo", NGINX_REPOS)
@pytest.mark.parametrize("action", NGINX_ACTIONS)
@pytest.mark.parametrize("principal", NGINX_PRINCIPALS)
def test_isolation_through_nginx(
    nginx_env: NginxEnv, principal: str, action: str, repo: str, method: str
) -> None:
    status, code = expect(principal, action, repo, method)
    answer = run_cell(nginx_env, principal, action, repo, method)
    assert (answer.status_code, error_code(answer)) == (status, code), answer.text[:300]
    if status == 401 and action != "replay":
        # The realm names the proxy's address, never Portway's own listener.
        _, params = parse_challenge(answer.headers["WWW-Authenticate"])
        client = nginx_env.client(principal, repo, method)
        assert params["realm"] == f"http://{client.visible_host()}/v2/token"
