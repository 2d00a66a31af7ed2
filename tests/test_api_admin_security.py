"""Nexus's security endpoints (users, roles, privileges) against a real `portway serve` with 2
workers: shapes, status codes, 401/403, and that what they change is what logins see."""

from __future__ import annotations

import requests

from admin_api_support import NEXUS, VIEWER, add_viewer, admin, eventually, server
from support.server import PortwayServer

__all__ = ["admin", "server"]  # fixtures
USERS, ROLES = f"{NEXUS}/security/users", f"{NEXUS}/security/roles"


def test_users_roles_privileges(server: PortwayServer, admin: requests.Session) -> None:
    base = server.url
    add_viewer(server, admin)
    users = {u["userId"]: u for u in admin.get(f"{base}{USERS}").json()}
    assert set(users) >= {"admin", VIEWER[0]}
    dev = users[VIEWER[0]]
    assert dev["status"] == "active" and dev["roles"] == ["developers"]
    assert dev["source"] == "default" and dev["readOnly"] is False
    assert set(dev) >= {"firstName", "lastName", "emailAddress", "externalRoles"}
    # The new user can sign in; without an admin privilege the admin endpoints say 403.
    viewer = requests.Session()
    viewer.auth = VIEWER
    assert viewer.get(f"{base}{USERS}").status_code == 403
    assert viewer.get(f"{base}{ROLES}").status_code == 403
    assert viewer.get(f"{base}{NEXUS}/security/privileges").status_code == 403
    assert requests.get(f"{base}{USERS}").status_code == 401

    role = admin.get(f"{base}{ROLES}/developers").json()
    assert role == {
        "id": "developers",
        "source": "default",
        "name": "developers",
        "description": "pull and push",
        "readOnly": False,
        "privileges": ["nx-repository-view-docker-*-*"],
        "roles": [],
    }
    # A user administrator role, given to dev: now the user list answers.
    managers = {"id": "user-managers", "name": "user-managers", "privileges": ["nx-users-all"]}
    assert admin.post(f"{base}{ROLES}", json=managers).status_code == 200
    assert admin.post(f"{base}{ROLES}", json=managers).status_code == 409
    dev |= {"roles": ["developers", "user-managers"]}
    assert admin.put(f"{base}{USERS}/{VIEWER[0]}", json=dev).status_code == 204
    eventually(lambda: viewer.get(f"{base}{USERS}").status_code == 200)
    assert viewer.get(f"{base}{ROLES}").status_code == 403  # roles need nx-roles-all

    # Privileges: admin ones and one per repository and action.
    privileges = {p["name"]: p for p in admin.get(f"{base}{NEXUS}/security/privileges").json()}
    assert privileges["nx-all"]["type"] == "application"
    view = privileges["nx-repository-view-docker-docker-hosted-read"]
    assert view == {
        "type": "repository-view",
        "name": "nx-repository-view-docker-docker-hosted-read",
        "description": "read on docker-hosted",
        "readOnly": True,
        "format": "docker",
        "repository": "docker-hosted",
        "actions": ["READ"],
    }
    one = admin.get(f"{base}{NEXUS}/security/privileges/nx-users-all")
    assert one.status_code == 200 and one.json()["domain"] == "users"
    assert admin.get(f"{base}{NEXUS}/security/privileges/nope").status_code == 404
    bad = admin.put(f"{base}{ROLES}/user-managers", json=managers | {"privileges": ["nx-nope"]})
    assert bad.status_code == 400 and "nx-nope" in bad.json()["detail"]

    # Change password (text/plain), disable, delete.
    new = "another-password-2"
    changed = viewer.put(
        f"{base}{USERS}/{VIEWER[0]}/change-password",
        data=new,
        headers={"Content-Type": "text/plain"},
    )
    assert changed.status_code == 204, changed.text
    eventually(lambda: requests.get(f"{base}{NEXUS}/repositories", auth=VIEWER).status_code == 401)
    assert requests.get(f"{base}{NEXUS}/repositories", auth=(VIEWER[0], new)).status_code == 200
    short = admin.put(f"{base}{USERS}/{VIEWER[0]}/change-password", data="x")
    assert short.status_code == 400 and "short" in short.json()["detail"]
    dev |= {"status": "disabled"}
    assert admin.put(f"{base}{USERS}/{VIEWER[0]}", json=dev).status_code == 204
    eventually(
        lambda: (
            requests.get(f"{base}{NEXUS}/repositories", auth=(VIEWER[0], new)).status_code == 401
        )
    )
    assert admin.delete(f"{base}{USERS}/{VIEWER[0]}").status_code == 204
    assert admin.delete(f"{base}{USERS}/{VIEWER[0]}").status_code == 404
    assert admin.put(f"{base}{USERS}/ghost", json=dev | {"userId": "ghost"}).status_code == 404
    assert admin.delete(f"{base}{ROLES}/user-managers").status_code == 204
    assert admin.get(f"{base}{ROLES}/user-managers").status_code == 404
    assert admin.delete(f"{base}{ROLES}/admin").status_code == 400  # built in
    duplicate = admin.post(
        f"{base}{USERS}",
        json={"userId": "admin", "password": "long-enough-1", "status": "active", "roles": []},
    )
    assert duplicate.status_code == 409


def test_every_operation_refuses_anonymous_and_non_admins(
    server: PortwayServer, admin: requests.Session
) -> None:
    """Straight from the route table: no credentials is 401 with a Basic challenge everywhere;
    a signed-in user without the operation's admin privilege gets 403."""
    import re

    from portway.api.views import operations

    requests.post(  # a user with repository privileges only (may exist from another test)
        f"{server.url}{USERS}",
        auth=admin.auth,
        json={"userId": "plain", "password": "plain-password-1", "status": "active", "roles": []},
    )
    checked = 0
    for op in operations():
        url = server.url + re.sub(r"{\w+}", "x", op.path)
        anonymous = requests.request(op.method, url, json={})
        assert anonymous.status_code == 401, (op.method, op.path, anonymous.text)
        assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
        if op.privilege is None:
            continue
        plain = requests.request(op.method, url, json={}, auth=("plain", "plain-password-1"))
        assert plain.status_code == 403, (op.method, op.path, plain.text)
        assert plain.json()["status"] == 403
        checked += 1
    assert checked >= 20
