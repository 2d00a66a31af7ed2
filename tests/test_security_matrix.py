"""Isolation between teams: every action x every principal x every access method.

Two teams, each a hosted repository and a group over it, each repository reachable through its
own connector port, its own host name, the Nexus path and repository-path routing. Principals:
admin, alice (team A, every action), carol (team A, browse/read/add: no overwrite, no delete),
bob (team B, every action), nobody (a user without roles) and anonymous. Raw HTTP with the
Docker bearer dance; the expected outcome of every cell comes from `expect()` below, which
states the policy in one place. A reduced matrix runs again through nginx.

Existence does not leak: where the principal may not see the repository, the cell's whole
answer is compared with the same request for a repository that does not exist (`team-c-*`,
through `/repository/team-c-*/`, a repository path, a wildcard host naming it) or, on a
connector, an image that was never pushed.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from conceal_support import RecordingClient, shape
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


def missing(repo: str) -> str:
    """A repository of the same kind that does not exist."""
    return repo.replace("team-a", "team-c").replace("team-b", "team-c")


WILDCARD = "teams.test"  # `*.teams.test`: the first label names the repository


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

    def client(self, principal: str, repo: str, method: str) -> RecordingClient:
        user, password = self.creds(principal)
        s = self.server
        if method == "connector":
            base = f"http://127.0.0.1:{self.ports[repo]}"
            return RecordingClient(base, user=user, password=password)
        if method == "host":
            host = f"{host_name(repo)}:{s.port}"
            return RecordingClient(s.url, host=host, user=user, password=password)
        if method == "nexus":
            prefix = f"/repository/{repo}"
            return RecordingClient(s.url, prefix=prefix, user=user, password=password)
        return RecordingClient(s.url, user=user, password=password)

    def twin(self, principal: str, repo: str, method: str) -> RecordingClient:
        """The client of `client()` aimed at the repository that does not exist."""
        user, password = self.creds(principal)
        s = self.server
        if method == "host":
            host = f"{missing(repo)}.{WILDCARD}:{s.port}"
            return RecordingClient(s.url, host=host, user=user, password=password)
        if method == "nexus":
            prefix = f"/repository/{missing(repo)}"
            return RecordingClient(s.url, prefix=prefix, user=user, password=password)
        return self.client(principal, repo, method)

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
        hosts=[{"name": host_name(r), "repository": r} for r in REPOS]
        + [{"name": f"*.{WILDCARD}"}],
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


def run_cell(
    env: Env, principal: str, action: str, repo: str, method: str, client: Client | None = None
) -> requests.Response:
    """Perform one action (through `client`, else a new one for the cell); returns the answer
    whose status the cell asserts."""
    cell = f"{principal}-{method}-{repo}"
    client = client or env.client(principal, repo, method)
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
    client = env.client(principal, repo, method)
    answer = run_cell(env, principal, action, repo, method, client)
    assert (answer.status_code, error_code(answer)) == (status, code), answer.text[:300]
    if status == 401:
        scheme, params = parse_challenge(answer.headers["WWW-Authenticate"])
        assert scheme == "bearer" and params["service"] == "portway"
    if hidden(principal, action, repo, method):
        assert_same_as_missing(env, principal, repo, method, client, answer)


def hidden(principal: str, action: str, repo: str, method: str) -> bool:
    """Must this cell's answer be that of a repository that does not exist?"""
    if allowed(principal, repo) & {"read", "browse"} or action == "replay":
        return False
    return not (method == "repopath" and action in ("catalog", "search"))  # not per repository


_IMAGE_IN_PATH = re.compile(r"^/v2/(.+?)/(manifests|blobs|tags|referrers)/")


def assert_same_as_missing(
    env: Env,
    principal: str,
    repo: str,
    method: str,
    client: RecordingClient,
    answer: requests.Response,
) -> None:
    """The cell's last request, made again for what does not exist, answers the same."""
    assert client.last is not None
    path = client.last[2]
    twin = env.twin(principal, repo, method)
    names = [(client.visible_host(), "<host>"), (twin.visible_host(), "<host>")]
    if method == "connector":  # the repository is the port's: an image never pushed
        found = _IMAGE_IN_PATH.match(path)
        if found:
            names.append((found.group(1), "<image>"))
            path = path.replace(found.group(1), "never-pushed", 1)
        names.append(("never-pushed", "<image>"))
    elif method == "repopath":
        path = path.replace(f"/v2/{repo}/", f"/v2/{missing(repo)}/", 1)
    names += [(repo, "<repo>"), (missing(repo), "<repo>")]
    again = twin.replay(client.last, path)
    assert shape(again, names) == shape(answer, names)


# -- details the matrix does not show -------------------------------------------------------


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return {k: v for k, v in claims.items() if k not in ("iat", "nbf", "exp", "jti")}


@pytest.mark.parametrize("principal", ("anonymous", "nobody", "bob"))
def test_registry_root_and_tokens_do_not_tell_a_missing_repository(
    env: Env, principal: str
) -> None:
    """`/v2/` of a repository route and the token endpoint: team A's repository and one that
    does not exist answer alike (challenge, then the same kind of token granting nothing)."""
    repo = "team-a-hosted"
    for method in ("nexus", "host", "repopath"):
        mine, twin = env.client(principal, repo, method), env.twin(principal, repo, method)
        names = [(mine.visible_host(), "<host>"), (twin.visible_host(), "<host>")]
        names += [(repo, "<repo>"), (missing(repo), "<repo>")]
        if method != "repopath":  # the shared host's /v2/ names no repository
            first = mine.raw("GET", "/v2/")
            assert first.status_code == 401
            assert shape(first, names) == shape(twin.raw("GET", "/v2/"), names)
            logged_in = mine.request("GET", "/v2/")
            assert logged_in.status_code == 200
            assert shape(logged_in, names) == shape(twin.request("GET", "/v2/"), names)
        pulls = []
        for client, target in ((mine, repo), (twin, missing(repo))):
            client.token = None
            answer = client.raw("GET", f"/v2/{name_on(method, target, 'base')}/manifests/v1")
            _, params = parse_challenge(answer.headers["WWW-Authenticate"])
            assert client.fetch_token(params), client.token_answers[-1].text
            granted = client.token_answers[-1]
            pulls.append((shape(answer, names), granted.status_code, granted.json()["scope"]))
            pulls.append(json.dumps(_claims(granted.json()["token"])).replace(target, "<repo>"))
        assert pulls[:2] == pulls[2:] and pulls[0][2] == ""


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
