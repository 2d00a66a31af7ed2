"""Isolation between teams: every action x every principal x every access method.

Two teams, each a hosted repository and a group over it, each repository reachable through its
own connector port, its own host name, the Nexus path and repository-path routing. Principals:
admin, alice (team A, every action), carol (team A, browse/read/add: no overwrite, no delete),
bob (team B, every action), nobody (a user without roles) and anonymous. Raw HTTP with the
Docker bearer dance; the expected outcome of every cell comes from `expect()` below, which
states the policy in one place. A reduced matrix runs again through nginx.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from support.ports import free_port
from support.process import ManagedProcess, port_open
from support.security import Client, cli, digest_of, make_image, parse_challenge, push_image
from support.server import PortwayServer

TEAMS = ("a", "b")
REPOS = ("team-a-hosted", "team-a-group", "team-b-hosted", "team-b-group")
METHODS = ("connector", "host", "nexus", "repopath")
PRINCIPALS = ("admin", "alice", "carol", "bob", "nobody", "anonymous")
ACTIONS = (
    "pull",
    "push",
    "overwrite",
    "delete",
    "tags",
    "catalog",
    "referrers",
    "search",
    "mount",
    "replay",
)
PASSWORDS = {
    "alice": "alice-Secret-1",
    "carol": "carol-Secret-2",
    "bob": "bob-Secret-3",
    "nobody": "nobody-Secret-4",
}
ALL = frozenset({"browse", "read", "add", "edit", "delete"})
# The policy under test: repository actions per principal (admin holds everything).
POLICY: dict[str, dict[str, frozenset[str]]] = {
    "alice": {"team-a": ALL},
    "carol": {"team-a": frozenset({"browse", "read", "add"})},
    "bob": {"team-b": ALL},
    "nobody": {},
    "anonymous": {},
}


def team_of(repo: str) -> str:
    return repo.rsplit("-", 1)[0]


def other(repo: str) -> str:
    return repo.replace("team-a", "team-x").replace("team-b", "team-a").replace("team-x", "team-b")


def hosted(repo: str) -> str:
    return team_of(repo) + "-hosted"


def host_name(repo: str) -> str:
    # The seed's naming: "<team>-push" for the hosted repository, "<team>" for the group.
    return f"{team_of(repo)}-push.test" if repo.endswith("hosted") else f"{team_of(repo)}.test"


def allowed(principal: str, repo: str) -> frozenset[str]:
    if principal == "admin":
        return ALL
    return POLICY[principal].get(team_of(repo), frozenset())


def browsable(principal: str) -> set[str]:
    return {r for r in REPOS if "browse" in allowed(principal, r)}


# -- the expected outcome of one cell --------------------------------------------------------


def refusal(principal: str, repo: str) -> tuple[int, str]:
    """Anonymous is asked to log in; a user who may not even read gets "no such repository";
    a user who may read but not do this gets DENIED."""
    if principal == "anonymous":
        return 401, "UNAUTHORIZED"
    if not allowed(principal, repo) & {"read", "browse"}:
        return 404, "NAME_UNKNOWN"
    return 403, "DENIED"


def expect(principal: str, action: str, repo: str, method: str) -> tuple[int, str]:
    """(status, error code or "" for success) for one cell."""
    have = allowed(principal, repo)
    need = {
        "pull": {"read"},
        "push": {"read", "add"},
        "overwrite": {"read", "add", "edit"},
        "delete": {"delete"},
        "tags": {"read"},
        "referrers": {"read"},
        "mount": {"read", "add"},
    }
    if action == "replay":
        return 401, "UNAUTHORIZED"  # a token from the other team's realm, for anyone
    if action == "search":
        # Filtered for a user; anonymous, from whom something is hidden, is asked to log in
        # (podman then lists the catalog with its credentials).
        return (401, "UNAUTHORIZED") if principal == "anonymous" else (200, "")
    if action == "catalog":
        if method == "repopath" and principal != "anonymous":
            return 200, ""  # the shared host's catalog, filtered
        if method == "repopath":
            return 200, ""  # anonymous gets an anonymous token, and an empty list
        return (200, "") if "browse" in have else refusal(principal, repo)
    if need[action] <= have:
        return {"push": 201, "overwrite": 201, "delete": 202, "mount": 202}.get(action, 200), ""
    return refusal(principal, repo)


# -- one server for the whole module --------------------------------------------------------


def team_repositories() -> list[dict[str, Any]]:
    repos: list[dict[str, Any]] = []
    for team in TEAMS:
        repos.append({"name": f"team-{team}-hosted", "type": "hosted", "path_routing": True})
        repos.append(
            {
                "name": f"team-{team}-group",
                "type": "group",
                "members": [f"team-{team}-hosted"],
                "writable_member": f"team-{team}-hosted",
                "path_routing": True,
            }
        )
    return repos


def add_principals(server: PortwayServer) -> None:
    cli(server, "role", "add", "team-a", "--privilege", "team-a-*:browse,read,add,edit,delete")
    cli(server, "role", "add", "team-a-dev", "--privilege", "team-a-*:browse,read,add")
    cli(server, "role", "add", "team-b", "--privilege", "team-b-*:browse,read,add,edit,delete")
    roles = {"alice": ["team-a"], "carol": ["team-a-dev"], "bob": ["team-b"], "nobody": []}
    for user, names in roles.items():
        flags = [f"--role={r}" for r in names]
        cli(server, "user", "add", user, "--password", PASSWORDS[user], *flags)


BASE = {team: make_image(f"base-{team}") for team in TEAMS}


class Env:
    def __init__(self, server: PortwayServer) -> None:
        self.server = server
        self.admin_password = server.admin_password() or ""
        self.ports = {r: server.connector_port(i) for i, r in enumerate(REPOS)}

    def creds(self, principal: str) -> tuple[str | None, str | None]:
        if principal == "anonymous":
            return None, None
        if principal == "admin":
            return "admin", self.admin_password
        return principal, PASSWORDS[principal]

    def client(self, principal: str, repo: str, method: str) -> Client:
        user, password = self.creds(principal)
        s = self.server
        if method == "connector":
            return Client(f"http://127.0.0.1:{self.ports[repo]}", user=user, password=password)
        if method == "host":
            return Client(s.url, host=f"{host_name(repo)}:{s.port}", user=user, password=password)
        if method == "nexus":
            return Client(s.url, prefix=f"/repository/{repo}", user=user, password=password)
        return Client(s.url, user=user, password=password)

    def admin(self, repo: str) -> Client:
        """Admin on the hosted repository's Nexus path, Basic on every request (seeding)."""
        client = Client(self.server.url, prefix=f"/repository/{hosted(repo)}")
        client.basic = ("admin", self.admin_password)
        return client


def name_on(method: str, repo: str, image: str) -> str:
    return f"{repo}/{image}" if method == "repopath" else image


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    server = PortwayServer(
        tmp_path_factory.mktemp("security-matrix"),
        repositories=team_repositories(),
        connectors=[{"repository": r} for r in REPOS],
        hosts=[{"name": host_name(r), "repository": r} for r in REPOS],
        security={"enabled": True},
    )
    server.start()
    try:
        add_principals(server)
        environment = Env(server)
        for team in TEAMS:
            seeder = environment.admin(f"team-{team}-hosted")
            answer = push_image(seeder, "base", "v1", BASE[team])
            assert answer.status_code == 201, answer.text
        yield environment
    finally:
        server.stop()
        print(server.log()[-4000:])


def error_code(answer: requests.Response) -> str:
    if answer.status_code < 400:
        return ""
    try:
        return str(answer.json()["errors"][0]["code"])
    except (ValueError, KeyError, IndexError):
        return f"<{answer.text[:80]}>"


def run_cell(env: Env, principal: str, action: str, repo: str, method: str) -> requests.Response:
    """Perform one action; returns the answer whose status the cell asserts."""
    cell = f"{principal}-{method}-{repo}"
    client = env.client(principal, repo, method)
    admin = env.admin(repo)
    name = name_on(method, repo, "base")
    base = BASE[team_of(repo)[-1]]
    if action == "pull":
        return client.get_manifest(name, "v1")
    if action == "push":
        answer = push_image(client, name_on(method, repo, f"push-{cell}"), "v1", make_image(cell))
        present = admin.get_manifest(f"push-{cell}", "v1").status_code
        assert present == (200 if answer.status_code == 201 else 404)
        return answer
    if action == "overwrite":
        assert push_image(admin, f"ow-{cell}", "v1", make_image(cell)).status_code == 201
        second = make_image(cell, note="overwritten")
        answer = client.put_manifest(name_on(method, repo, f"ow-{cell}"), "v1", second.manifest)
        now = admin.get_manifest(f"ow-{cell}", "v1").content
        assert now == (second.manifest if answer.status_code == 201 else make_image(cell).manifest)
        return answer
    if action == "delete":
        image = make_image(f"del-{cell}")
        assert push_image(admin, f"del-{cell}", "v1", image).status_code == 201
        answer = client.request(
            "DELETE", f"/v2/{name_on(method, repo, f'del-{cell}')}/manifests/{image.digest}"
        )
        left = admin.get_manifest(f"del-{cell}", image.digest).status_code
        assert left == (404 if answer.status_code == 202 else 200)
        return answer
    if action == "tags":
        answer = client.request("GET", f"/v2/{name}/tags/list")
        if answer.status_code == 200:
            assert answer.json() == {"name": name, "tags": ["v1"]}
        return answer
    if action == "catalog":
        answer = client.request("GET", "/v2/_catalog")
        if answer.status_code == 200:
            listed = answer.json()["repositories"]
            if method == "repopath":
                # Only what the caller may browse, every image of it.
                assert {n.partition("/")[0] for n in listed} == browsable(principal)
            else:
                assert "base" in listed
        return answer
    if action == "referrers":
        return client.request("GET", f"/v2/{name}/referrers/{base.digest}")
    if action == "search":
        user, password = env.creds(principal)
        auth = (user, password) if user else None
        answer = client.raw("GET", "/v1/search", params={"q": "base"}, auth=auth)
        if answer.status_code != 200:
            return answer
        found = {r["name"] for r in answer.json()["results"]}
        if method == "repopath":
            assert found == {f"{r}/base" for r in browsable(principal)}
        else:
            assert found == ({"base"} if repo in browsable(principal) else set())
        return answer
    if action == "mount":
        # The other team's layer (same image name there), asked for by its own name.
        foreign = BASE["b" if team_of(repo) == "team-a" else "a"].layer
        from_name = name_on(method, other(repo), "base")
        target = name_on(method, repo, f"mount-{cell}")
        answer = client.request(
            "POST",
            f"/v2/{target}/blobs/uploads/",
            params={"mount": digest_of(foreign), "from": from_name},
        )
        assert answer.status_code != 201, "a blob of the other team was mounted"
        return answer
    if action == "replay":
        # A token the same principal obtained through the other team's route, same image
        # name, presented here.
        there = env.client(principal, other(repo), method)
        fetched = there.get_manifest(name_on(method, other(repo), "base"), "v1")
        assert there.token, fetched.text
        client.token, client.fixed_token = there.token, True
        answer = client.get_manifest(name, "v1")
        scheme, params = parse_challenge(answer.headers.get("WWW-Authenticate", ""))
        assert scheme == "bearer" and params.get("error") == "invalid_token", answer.headers
        return answer
    raise AssertionError(action)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("repo", REPOS)
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("principal", PRINCIPALS)
def test_isolation(env: Env, principal: str, action: str, repo: str, method: str) -> None:
    status, code = expect(principal, action, repo, method)
    answer = run_cell(env, principal, action, repo, method)
    assert (answer.status_code, error_code(answer)) == (status, code), answer.text[:300]
    if status == 401:
        scheme, params = parse_challenge(answer.headers["WWW-Authenticate"])
        assert scheme == "bearer" and params["service"] == "portway"
    if status == 404:
        # No existence leak: the same answer as for an image that was never there.
        ghost = env.client(principal, repo, method).get_manifest(
            name_on(method, repo, "never-pushed"), "v1"
        )
        assert ghost.status_code == 404 and error_code(ghost) == "NAME_UNKNOWN"


# -- details the matrix does not show -------------------------------------------------------


def test_realm_follows_the_route(env: Env) -> None:
    """The challenge's realm is the URL the client came through, for every method."""
    s = env.server
    expected = {
        "connector": f"http://127.0.0.1:{env.ports['team-a-hosted']}/v2/token",
        "host": f"http://team-a-push.test:{s.port}/v2/token",
        "nexus": f"{s.url}/repository/team-a-hosted/v2/token",
        "repopath": f"{s.url}/v2/token",
    }
    for method, realm in expected.items():
        answer = env.client("anonymous", "team-a-hosted", method).raw("GET", "/v2/")
        assert answer.status_code == 401
        scheme, params = parse_challenge(answer.headers["WWW-Authenticate"])
        assert (scheme, params["realm"], params["service"]) == ("bearer", realm, "portway")


def test_docker_login_flow_per_principal(env: Env) -> None:
    """GET /v2/ -> 401 -> token with Basic -> 200: any valid user may log in anywhere (what
    they may do is decided per request); a wrong password gets 401 from the token endpoint."""
    for principal in ("admin", "alice", "bob", "nobody"):
        for method in METHODS:
            client = env.client(principal, "team-a-hosted", method)
            assert client.login().status_code == 200, (principal, method)
    wrong = env.client("alice", "team-a-hosted", "connector")
    wrong.password = "not-her-password"
    answer = wrong.login()
    assert answer.status_code == 401
    assert wrong.token_answers[-1].status_code == 401
    assert "incorrect username or password" in wrong.token_answers[-1].text


def test_group_token_refused_on_its_member(env: Env) -> None:
    """A token is bound to one repository: the group's is not the hosted member's."""
    group = env.client("alice", "team-a-group", "connector")
    assert group.get_manifest("base", "v1").status_code == 200
    member = env.client("alice", "team-a-hosted", "connector")
    member.token, member.fixed_token = group.token, True
    assert member.get_manifest("base", "v1").status_code == 401


@pytest.mark.parametrize("method", METHODS)
def test_mount_follows_the_challenge(env: Env, method: str) -> None:
    """The positive control for the mount cells: the challenge of a mount also asks for pull
    on the source (as distribution's does), so a client that requests exactly the challenge's
    scope gets a token that reads the source, and the blob mounts (201, not an upload)."""
    client = env.client("alice", "team-a-hosted", method)
    target = name_on(method, "team-a-hosted", f"mounted-{method}")
    source = name_on(method, "team-a-hosted", "base")
    path = f"/v2/{target}/blobs/uploads/"
    params = {"mount": digest_of(BASE["a"].layer), "from": source}
    first = client.raw("POST", path, params=params)
    assert first.status_code == 401, first.text
    _, challenge = parse_challenge(first.headers["WWW-Authenticate"])
    assert challenge["scope"] == f"repository:{target}:pull,push repository:{source}:pull"
    answer = client.request("POST", path, params=params)
    assert answer.status_code == 201, answer.text
    assert answer.headers["Docker-Content-Digest"] == params["mount"]
    granted = client.token_answers[-1].json()["scope"]
    assert granted == f"repository:{target}:pull,push repository:{source}:pull"
    # The token grants only what the user may: bob follows the same challenge, gets nothing.
    bob = env.client("bob", "team-a-hosted", method)
    refused = bob.request("POST", path, params=params)
    assert (refused.status_code, error_code(refused)) == (404, "NAME_UNKNOWN")
    assert bob.token_answers[-1].json()["scope"] == ""


def test_blob_of_other_team_is_unknown_here(env: Env) -> None:
    """One blob store, but a digest pushed only by team B is not readable through team A."""
    digest = digest_of(BASE["b"].layer)
    alice = env.client("alice", "team-a-hosted", "connector")
    answer = alice.request("GET", f"/v2/base/blobs/{digest}")
    assert answer.status_code == 404 and error_code(answer) == "BLOB_UNKNOWN"


# -- the same isolation through nginx -------------------------------------------------------


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

    def client(self, principal: str, repo: str, method: str) -> Client:
        user, password = self.creds(principal)
        if method == "connector":
            return Client(f"http://127.0.0.1:{self.ports[repo]}", user=user, password=password)
        return Client(
            f"http://127.0.0.1:{self.http_port}",
            host=f"{host_name(repo)}:{self.http_port}",
            user=user,
            password=password,
        )


def _nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail("nginx is not installed (scripts/install-test-deps.sh)")
    return found


@pytest.fixture(scope="module")
def nginx_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxEnv]:
    binary = _nginx()
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
    run_dir = root / "run"
    run_dir.mkdir()
    conf = root / "nginx.conf"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "portway",
            "proxy-config",
            "nginx",
            "--config",
            str(server.config_path),
            "--runtime-dir",
            str(run_dir),
            "--http-port",
            str(http_port),
            "--bind",
            "127.0.0.1",
            "--output",
            str(conf),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    proxy = ManagedProcess(
        [binary, "-c", str(conf), "-e", str(run_dir / "startup.log"), "-g", "daemon off;"],
        run_dir / "nginx.out",
        cwd=root,
    )
    proxy.start()
    try:
        ports = [server.connector_port(i) for i in range(len(NGINX_REPOS))] + [http_port]
        for port in ports:
            proxy.wait_until(lambda p=port: port_open("127.0.0.1", p), 30, f"nginx on {port}")
        add_principals(server)
        environment = NginxEnv(server, http_port)
        for team in TEAMS:
            seeder = environment.admin(f"team-{team}-hosted")
            assert push_image(seeder, "base", "v1", BASE[team]).status_code == 201
        yield environment
    finally:
        proxy.stop()
        server.stop()
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
