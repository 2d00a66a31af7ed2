"""Nexus's repository endpoints against a real `portway serve` with 2 workers: shapes and
status codes, Nexus's documented request bodies replayed, file-managed repositories refused,
401/403, a repository created through the API pushed to at once with skopeo, and a change seen
by both workers within a second."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import requests

from admin_api_support import NEXUS, VIEWER, add_viewer, admin, on_both_workers, server
from support.cluster import token
from support.engines import skopeo
from support.images import OciImage
from support.server import PortwayServer

__all__ = ["admin", "server"]  # fixtures
EXAMPLES = json.loads((Path(__file__).parent / "data" / "nexus-docker-examples.json").read_text())
REPOS = f"{NEXUS}/repositories"


def example(kind: str, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLES[kind])
    # No connector of the test server serves Nexus's example ports (8082/8083).
    body["docker"]["httpPort"] = body["docker"]["httpsPort"] = None
    body.update(changes)
    return body


@pytest.fixture(scope="module")
def viewer(server: PortwayServer, admin: requests.Session) -> requests.Session:
    add_viewer(server, admin)
    session = requests.Session()
    session.auth = VIEWER
    return session


def test_anonymous_401_non_admin_403(server: PortwayServer, viewer: requests.Session) -> None:
    anonymous = requests.post(f"{server.url}{REPOS}/docker/hosted", json=example("hosted"))
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")
    assert anonymous.headers["Content-Type"].startswith("application/problem+json")
    assert anonymous.json()["status"] == 401
    refused = viewer.post(f"{server.url}{REPOS}/docker/hosted", json=example("hosted"))
    assert refused.status_code == 403, refused.text
    assert "repositories" in refused.json()["detail"]
    assert viewer.delete(f"{server.url}{REPOS}/docker-hosted").status_code == 403
    wrong = requests.get(f"{server.url}{REPOS}", auth=("admin", "not-the-password"))
    assert wrong.status_code == 401
    # Listing is open to any signed-in user (what they may browse).
    listed = viewer.get(f"{server.url}{REPOS}")
    assert listed.status_code == 200
    assert "docker-hosted" in [r["name"] for r in listed.json()]


def test_nexus_examples_replayed(server: PortwayServer, admin: requests.Session) -> None:
    base = server.url
    for kind in ("hosted", "proxy", "group"):
        body = example(kind)
        created = admin.post(f"{base}{REPOS}/docker/{kind}", json=body)
        assert created.status_code == 201, created.text
        got = admin.get(f"{base}{REPOS}/docker/{kind}/{body['name']}")
        assert got.status_code == 200
        answer = got.json()
        assert answer["name"] == body["name"] and answer["format"] == "docker"
        assert answer["type"] == kind and answer["online"] is True
        assert answer["url"] == f"{base}/repository/{body['name']}"
        assert answer["docker"]["v1Enabled"] is False
        assert answer["portway"]["managedBy"] == "api"
    hosted = admin.get(f"{base}{REPOS}/docker/hosted/internal").json()
    assert hosted["storage"]["writePolicy"] == "allow_once"
    assert hosted["storage"]["latestPolicy"] is True
    proxy = admin.get(f"{base}{REPOS}/docker/proxy/internal-proxy").json()
    assert proxy["proxy"]["remoteUrl"] == "https://remote.repository.com"
    assert proxy["proxy"]["metadataMaxAge"] == 1440
    assert proxy["negativeCache"] == {"enabled": True, "timeToLive": 1440}
    assert proxy["dockerProxy"]["cacheForeignLayers"] is True
    assert proxy["dockerProxy"]["foreignLayerUrlWhitelist"] == ["string"]
    assert proxy["httpClient"]["authentication"]["username"] == "string"
    assert "password" not in json.dumps(proxy["httpClient"]).replace('"password": null', "")
    group = admin.get(f"{base}{REPOS}/docker/group/internal-group").json()
    assert group["group"] == {"memberNames": ["internal"], "writableMember": "internal"}
    listed = {r["name"]: r for r in admin.get(f"{base}{REPOS}").json()}
    assert listed["internal-group"] == {
        "name": "internal-group",
        "format": "docker",
        "type": "group",
        "url": f"{base}/repository/internal-group",
        "attributes": {},
    }
    # A member still named by a group cannot go; the group first, then the member.
    assert admin.delete(f"{base}{REPOS}/internal").status_code == 400
    for name in ("internal-group", "internal-proxy", "internal"):
        assert admin.delete(f"{base}{REPOS}/{name}").status_code == 204
    assert admin.get(f"{base}{REPOS}/docker/hosted/internal").status_code == 404


def test_example_ports_need_a_connector(server: PortwayServer, admin: requests.Session) -> None:
    refused = admin.post(f"{server.url}{REPOS}/docker/hosted", json=EXAMPLES["hosted"])
    assert refused.status_code == 400
    assert "[[connector]]" in refused.json()["detail"]


def test_write_policy_any_case_and_update(server: PortwayServer, admin: requests.Session) -> None:
    base, name = server.url, "policy-case"
    body = example("hosted", name=name)
    body["storage"] |= {"writePolicy": "DENY", "latestPolicy": False}
    assert admin.post(f"{base}{REPOS}/docker/hosted", json=body).status_code == 201
    assert (
        admin.get(f"{base}{REPOS}/docker/hosted/{name}").json()["storage"]["writePolicy"] == "deny"
    )
    body["storage"]["writePolicy"] = "Allow"
    assert admin.put(f"{base}{REPOS}/docker/hosted/{name}", json=body).status_code == 204
    got = admin.get(f"{base}{REPOS}/docker/hosted/{name}").json()
    assert got["storage"]["writePolicy"] == "allow" and got["portway"]["revision"] == 2
    body["storage"]["writePolicy"] = "sometimes"
    bad = admin.put(f"{base}{REPOS}/docker/hosted/{name}", json=body)
    assert bad.status_code == 400 and "writePolicy" in bad.text
    # Wrong kind in the path, unknown names, names that cannot change.
    assert admin.get(f"{base}{REPOS}/docker/proxy/{name}").status_code == 404
    assert (
        admin.put(
            f"{base}{REPOS}/docker/hosted/nope", json=example("hosted", name="nope")
        ).status_code
        == 404
    )
    assert (
        admin.put(
            f"{base}{REPOS}/docker/hosted/{name}", json=example("hosted", name="x")
        ).status_code
        == 400
    )
    assert (
        admin.post(f"{base}{REPOS}/docker/hosted", json=body | {"storage": {}}).status_code == 409
    )
    assert (
        admin.post(
            f"{base}{REPOS}/docker/proxy", json=example("proxy", name="p", proxy={})
        ).status_code
        == 400
    )
    assert admin.post(f"{base}{REPOS}/docker/hosted", data=b"{not json").status_code == 400
    assert admin.delete(f"{base}{REPOS}/{name}").status_code == 204
    assert admin.delete(f"{base}{REPOS}/{name}").status_code == 404


def test_file_repository_shown_and_refused(server: PortwayServer, admin: requests.Session) -> None:
    base = server.url
    got = admin.get(f"{base}{REPOS}/docker/hosted/docker-hosted")
    assert got.status_code == 200 and got.json()["portway"]["managedBy"] == "file"
    body = example("hosted", name="docker-hosted")
    refused = admin.put(f"{base}{REPOS}/docker/hosted/docker-hosted", json=body)
    assert refused.status_code == 409
    assert "configuration file" in refused.json()["detail"]
    assert admin.delete(f"{base}{REPOS}/docker-hosted").status_code == 409
    assert admin.post(f"{base}{REPOS}/docker/hosted", json=body).status_code == 409


def test_created_repository_pushed_at_once_and_seen_by_both_workers(
    server: PortwayServer, admin: requests.Session, oci_image: OciImage
) -> None:
    base, name = server.url, "fresh"
    password = server.admin_password()
    creds = ("admin", password or "")
    assert (
        admin.post(f"{base}{REPOS}/docker/hosted", json=example("hosted", name=name)).status_code
        == 201
    )
    # A bearer token: no password check for a worker to catch up during.
    scope = f"repository:{name}/app:pull,push"
    bearer = {"Authorization": "Bearer " + token(base, creds, [scope])}
    # At once, on new connections to either worker: no window where the other worker still
    # serves the set without it (a name it lacks makes it look at the generation).
    seen = on_both_workers(
        lambda: requests.post(f"{base}/v2/{name}/app/blobs/uploads/", headers=bearer),
        lambda r: r.status_code == 202,
        within=0,
    )
    assert len(seen) == 2
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"admin:{password}",
        oci_image.ref,
        f"docker://{server.host}/{name}/app:v1",
    )

    def ask() -> requests.Response:
        return requests.get(f"{base}/repository/{name}/v2/app/tags/list", auth=creds)

    seen = on_both_workers(ask, lambda r: r.status_code == 200 and r.json()["tags"] == ["v1"])
    assert len(seen) == 2
    assert admin.delete(f"{base}{REPOS}/{name}").status_code == 204
    seen = on_both_workers(ask, lambda r: r.status_code == 404)
    assert len(seen) == 2
