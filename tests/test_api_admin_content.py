"""Content through the admin API against a real `portway serve` with 2 workers: Nexus's
components, assets and search with continuation tokens; Portway's tag listing (cursor paging,
every sort order, untagged manifests), bulk tag delete with preview, signing keys, the audit
log, ETag/If-Match on repositories, and problem details."""

from __future__ import annotations

import pytest
import requests

from admin_api_support import NEXUS, admin, server
from support.security import Client, make_image, push_image
from support.server import PortwayServer

__all__ = ["admin", "server"]  # fixtures
TAGS = ["v1.0.0", "v1.2.0", "v1.10.0", "v2.0.0-rc.1", "v2.0.0", "latest", "pr-1", "pr-2"]
TAGS_URL = "/api/v1/repositories/docker-hosted/images/team/app/tags"


@pytest.fixture(scope="module")
def pushed(server: PortwayServer) -> dict[str, str]:
    """team/app with TAGS (pushed in that order, each its own image), other/tool:1, and one
    untagged manifest; returns tag -> digest."""
    client = Client(
        server.url,
        prefix="/repository/docker-hosted",
        user="admin",
        password=server.admin_password(),
    )
    digests = {}
    for index, tag in enumerate(TAGS):
        image = make_image("x" * (index + 1) + tag)
        assert push_image(client, "team/app", tag, image).status_code == 201
        digests[tag] = image.digest
    assert push_image(client, "other/tool", "1", make_image("tool")).status_code == 201
    untagged = make_image("loose")
    assert push_image(client, "team/app", untagged.digest, untagged).status_code == 201
    digests["<untagged>"] = untagged.digest
    return digests


def _all(session: requests.Session, url: str, **params: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    cursor = None
    for _ in range(20):
        query = dict(params, limit="3") | ({"cursor": cursor} if cursor else {})
        answer = session.get(url, params=query)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert page["total"] == len(TAGS)
        items += page["items"]
        cursor = page["nextCursor"]
        if cursor is None:
            return items
    raise AssertionError("paging did not end")


def test_tags_sorted_and_paged(
    server: PortwayServer, admin: requests.Session, pushed: dict[str, str]
) -> None:
    url = server.url + TAGS_URL
    by_name = [t["name"] for t in _all(admin, url)]
    assert by_name == sorted(TAGS)
    assert [t["name"] for t in _all(admin, url, order="desc")] == sorted(TAGS, reverse=True)
    assert [t["name"] for t in _all(admin, url, sort="semver")] == [
        "v1.0.0",
        "v1.2.0",
        "v1.10.0",
        "v2.0.0-rc.1",
        "v2.0.0",
        "latest",
        "pr-1",
        "pr-2",
    ]
    pushed_order = [t["name"] for t in _all(admin, url, sort="pushed")]
    assert pushed_order == TAGS
    assert [t["name"] for t in _all(admin, url, sort="pushed", order="desc")] == TAGS[::-1]
    sized = _all(admin, url, sort="size")
    sizes = [t["size"] for t in sized]
    assert sizes == sorted(sizes) and all(isinstance(s, int) and s > 0 for s in sizes)
    first = admin.get(url).json()["items"][0]
    assert first["digest"] == pushed[first["name"]]
    untagged = admin.get(url, params={"untagged": "true"}).json()["items"]
    assert [u["digest"] for u in untagged] == [pushed["<untagged>"]]
    assert untagged[0]["name"] is None
    for bad in ({"sort": "colour"}, {"limit": "0"}, {"cursor": "!!"}, {"order": "up"}):
        answer = admin.get(url, params=bad)
        assert answer.status_code == 400, (bad, answer.text)
        assert answer.headers["Content-Type"].startswith("application/problem+json")
    semver_cursor = admin.get(url, params={"sort": "semver", "limit": "2"}).json()["nextCursor"]
    assert admin.get(url, params={"sort": "pushed", "cursor": semver_cursor}).status_code == 400
    assert requests.get(url).status_code == 401
    assert admin.get(server.url + "/api/v1/repositories/nope/images/x/tags").status_code == 404


def test_bulk_delete_previews_then_deletes(
    server: PortwayServer, admin: requests.Session, pushed: dict[str, str]
) -> None:
    url = server.url + "/api/v1/repositories/docker-hosted/images/team/app/tags/delete"
    preview = admin.post(url, json={"match": "pr-*"})
    assert preview.status_code == 200
    assert preview.json()["preview"] is True and preview.json()["deleted"] == 0
    assert [t["name"] for t in preview.json()["tags"]] == ["pr-1", "pr-2"]
    assert len(admin.get(server.url + TAGS_URL).json()["items"]) == len(TAGS)
    done = admin.post(url, json={"match": "pr-*", "tags": ["latest"], "preview": False})
    assert done.status_code == 200 and done.json()["deleted"] == 3
    left = [t["name"] for t in admin.get(server.url + TAGS_URL).json()["items"]]
    assert left == sorted(set(TAGS) - {"pr-1", "pr-2", "latest"})
    assert admin.post(url, json={}).status_code == 400
    # Put them back for the other tests of this module.
    client = Client(
        server.url,
        prefix="/repository/docker-hosted",
        user="admin",
        password=server.admin_password(),
    )
    for index, tag in enumerate(TAGS):
        if tag in ("pr-1", "pr-2", "latest"):
            image = make_image("x" * (index + 1) + tag)
            assert push_image(client, "team/app", tag, image).status_code == 201


def test_components_assets_search(
    server: PortwayServer, admin: requests.Session, pushed: dict[str, str]
) -> None:
    base = server.url
    components = admin.get(f"{base}{NEXUS}/components", params={"repository": "docker-hosted"})
    assert components.status_code == 200
    page = components.json()
    assert page["continuationToken"] is None
    names = [(c["name"], c["version"]) for c in page["items"]]
    assert names == sorted([("team/app", t) for t in TAGS] + [("other/tool", "1")])
    one = page["items"][0]
    assert set(one) == {"id", "repository", "format", "group", "name", "version", "assets"}
    asset = one["assets"][0]
    assert asset["path"] == f"v2/{one['name']}/manifests/{one['version']}"
    assert asset["downloadUrl"].endswith(f"/repository/docker-hosted/{asset['path']}")
    assert asset["checksum"]["sha256"] and asset["contentType"]
    got = admin.get(f"{base}{NEXUS}/components/{one['id']}")
    assert got.status_code == 200 and got.json() == one
    assert admin.get(f"{base}{NEXUS}/assets/{asset['id']}").json() == asset
    assets = admin.get(f"{base}{NEXUS}/assets", params={"repository": "docker-hosted"}).json()
    assert [a["id"] for a in assets["items"]] == [c["assets"][0]["id"] for c in page["items"]]
    found = admin.get(f"{base}{NEXUS}/search", params={"name": "team/*", "version": "v2*"})
    assert sorted(c["version"] for c in found.json()["items"]) == ["v2.0.0", "v2.0.0-rc.1"]
    assert admin.get(f"{base}{NEXUS}/components").status_code == 400
    assert admin.get(f"{base}{NEXUS}/components", params={"repository": "nope"}).status_code == 404
    assert admin.get(f"{base}{NEXUS}/components/bogus").status_code == 404
    assert requests.get(f"{base}{NEXUS}/search").status_code == 401
    # Delete a component: the tag goes.
    tool = next(c for c in page["items"] if c["name"] == "other/tool")
    assert admin.delete(f"{base}{NEXUS}/components/{tool['id']}").status_code == 204
    assert admin.get(f"{base}{NEXUS}/components/{tool['id']}").status_code == 404


def test_continuation_tokens(server: PortwayServer, admin: requests.Session) -> None:
    client = Client(
        server.url,
        prefix="/repository/docker-hosted",
        user="admin",
        password=server.admin_password(),
    )
    image = make_image("many")
    assert push_image(client, "many", "t000", image).status_code == 201
    for i in range(1, 60):
        assert client.put_manifest("many", f"t{i:03d}", image.manifest).status_code == 201
    seen: list[str] = []
    token = None
    for _ in range(10):
        params = {"repository": "docker-hosted"} | ({"continuationToken": token} if token else {})
        page = admin.get(f"{server.url}{NEXUS}/components", params=params).json()
        seen += [f"{c['name']}:{c['version']}" for c in page["items"]]
        token = page["continuationToken"]
        if token is None:
            break
    many = [s for s in seen if s.startswith("many:")]
    assert many == [f"many:t{i:03d}" for i in range(60)]
    assert len(seen) == len(set(seen))


def test_portway_repositories_etag(server: PortwayServer, admin: requests.Session) -> None:
    base = f"{server.url}/api/v1/repositories"
    body = {"name": "etagged", "type": "hosted", "path_routing": True}
    created = admin.post(base, json=body)
    assert created.status_code == 201 and created.json()["managedBy"] == "api"
    etag = created.headers["ETag"]
    got = admin.get(f"{base}/etagged")
    assert got.headers["ETag"] == etag and got.json()["definition"]["write_policy"] == "allow"
    changed = admin.put(
        f"{base}/etagged", json=body | {"write_policy": "deny"}, headers={"If-Match": etag}
    )
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    stale = admin.put(f"{base}/etagged", json=body, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert stale.headers["Content-Type"].startswith("application/problem+json")
    assert admin.delete(f"{base}/etagged", headers={"If-Match": etag}).status_code == 412
    fresh = admin.get(f"{base}/etagged").headers["ETag"]
    assert admin.delete(f"{base}/etagged", headers={"If-Match": fresh}).status_code == 204
    listed = admin.get(base).json()["items"]
    assert {r["name"]: r["managedBy"] for r in listed}["docker-hosted"] == "file"
    file_put = admin.put(f"{base}/docker-hosted", json={"name": "docker-hosted", "type": "hosted"})
    assert file_put.status_code == 409
    assert admin.post(base, json={"name": "Bad Name", "type": "hosted"}).status_code == 400


def test_keys_and_audit(server: PortwayServer, admin: requests.Session) -> None:
    base = f"{server.url}/api/v1"
    keys = admin.get(f"{base}/keys").json()
    assert keys["current"] in keys["kids"]
    rotated = admin.post(f"{base}/keys/rotate")
    assert rotated.status_code == 201
    new = rotated.json()["kid"]
    assert admin.get(f"{base}/keys").json()["current"] == new
    assert admin.delete(f"{base}/keys/{new}").status_code == 409  # the current one
    assert admin.delete(f"{base}/keys/{keys['current']}").status_code == 204
    records = admin.get(f"{base}/audit", params={"event": "key.rotate"}).json()["items"]
    assert records and records[-1]["principal"] == "admin"
    assert records[-1]["detail"]["kid"] == new
    page = admin.get(f"{base}/audit", params={"limit": "1"}).json()
    assert len(page["items"]) == 1 and page["nextCursor"]
    following = admin.get(f"{base}/audit", params={"limit": "1", "cursor": page["nextCursor"]})
    assert following.json()["items"] != page["items"]
    assert admin.get(f"{base}/audit", params={"limit": "x"}).status_code == 400
