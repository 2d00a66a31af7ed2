"""Deployment policies per repository: allow, allow_once, allow_latest and deny (read-only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from api_support import (
    Api,
    assert_error,
    blob_files,
    random_bytes,
    running_server,
    sha256,
    unique,
)
from support import toml
from support.server import PortwayServer

REPOS = {
    "docker-allow": "allow",
    "docker-once": "allow_once",
    "docker-latest": "allow_latest",
    "docker-readonly": "deny",
}
READONLY_IMAGE = "frozen"
LATE_IMAGE = "late"
# Upload sessions on the read-only repository, opened while it was still writable:
# "patched" got one chunk then, "opened" nothing yet. step -> absolute session URL.
OPENED: dict[str, str] = {}
FIRST_CHUNK = random_bytes(1000)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    # the read-only repository starts writable, gets content, then turns read-only
    repositories = [
        {"name": name, "type": "hosted", "path_routing": True, "write_policy": "allow"}
        for name in REPOS
    ]
    with running_server(tmp_path_factory, "api-policies", repositories=repositories) as s:
        frozen = Api(s, "docker-readonly")
        frozen.push_image(READONLY_IMAGE, "v1")
        for step in ("patched", "opened"):
            started = frozen.start_upload(LATE_IMAGE)
            OPENED[step] = frozen.absolute(started.headers["Location"])
        r = frozen.http.patch(OPENED["patched"], data=FIRST_CHUNK, timeout=30)
        assert r.status_code == 202, r.text
        s.stop()
        for repo in s.repositories:
            repo["write_policy"] = REPOS[repo["name"]]
        s.config_path.write_text(toml.dumps(s._config()))
        s.start()
        yield s


def two_manifests(api: Api, image: str) -> tuple[bytes, bytes]:
    _d1, first = api.push_image(image, None)
    _d2, second = api.push_image(image, None)
    return first, second


@pytest.mark.parametrize("layout", ["nexus", "path"])
def test_allow_overwrites_and_deletes(server: PortwayServer, layout: str) -> None:
    api = Api(server, "docker-allow", layout)
    image = unique("img")
    first, second = two_manifests(api, image)
    assert api.put_manifest(image, "v1", first).status_code == 201
    assert api.put_manifest(image, "v1", second).status_code == 201
    assert api.get(image, "manifests/v1").content == second
    assert api.request("DELETE", image, "manifests/v1").status_code == 202
    assert api.request("DELETE", image, f"manifests/{sha256(first)}").status_code == 202


@pytest.mark.parametrize("layout", ["nexus", "path"])
def test_allow_once_refuses_redeploy(server: PortwayServer, layout: str) -> None:
    api = Api(server, "docker-once", layout)
    image = unique("img")
    first, second = two_manifests(api, image)
    assert api.put_manifest(image, "1.0", first).status_code == 201
    # the same manifest again is not a redeploy
    assert api.put_manifest(image, "1.0", first).status_code == 201
    assert_error(api.put_manifest(image, "1.0", second), 403, "DENIED")
    r = api.put_manifest(image, sha256(second), second, params={"tag": "1.0"})
    assert_error(r, 403, "DENIED")
    assert api.get(image, "manifests/1.0").content == first
    # new tags, untagged pushes and blobs are fine
    assert api.put_manifest(image, "1.1", second).status_code == 201
    assert api.put_manifest(image, sha256(second), second).status_code == 201
    api.push_blob(image, random_bytes(100))


@pytest.mark.parametrize("layout", ["nexus", "path"])
def test_allow_once_refuses_redeploy_of_latest_too(server: PortwayServer, layout: str) -> None:
    api = Api(server, "docker-once", layout)
    image = unique("img")
    first, second = two_manifests(api, image)
    assert api.put_manifest(image, "latest", first).status_code == 201
    assert_error(api.put_manifest(image, "latest", second), 403, "DENIED")


@pytest.mark.parametrize("layout", ["nexus", "path"])
def test_allow_latest(server: PortwayServer, layout: str) -> None:
    api = Api(server, "docker-latest", layout)
    image = unique("img")
    first, second = two_manifests(api, image)
    for tag in ("latest", "2.0"):
        assert api.put_manifest(image, tag, first).status_code == 201
    assert api.put_manifest(image, "latest", second).status_code == 201
    assert api.get(image, "manifests/latest").content == second
    assert_error(api.put_manifest(image, "2.0", second), 403, "DENIED")
    assert api.get(image, "manifests/2.0").content == first
    # several tags at once: one refused tag refuses the whole push
    r = api.put_manifest(image, sha256(second), second, params=[("tag", "latest"), ("tag", "2.0")])
    assert_error(r, 403, "DENIED")


@pytest.mark.parametrize("layout", ["nexus", "path"])
def test_deny_is_read_only(server: PortwayServer, layout: str) -> None:
    api = Api(server, "docker-readonly", layout)
    image = READONLY_IMAGE
    got = api.get(image, "manifests/v1")
    assert got.status_code == 200
    digest = got.headers["Docker-Content-Digest"]
    layer = got.json()["layers"][0]["digest"]
    assert api.get(image, f"blobs/{layer}").status_code == 200
    assert api.get(image, "tags/list").json()["tags"] == ["v1"]

    data = random_bytes(100)
    assert_error(api.request("POST", image, "blobs/uploads/"), 403, "DENIED")
    r = api.request("POST", image, "blobs/uploads/", params={"digest": sha256(data)}, data=data)
    assert_error(r, 403, "DENIED")
    assert api.head(image, f"blobs/{sha256(data)}").status_code == 404
    assert_error(api.put_manifest(image, "v2", got.content), 403, "DENIED")
    assert_error(api.put_manifest(image, digest, got.content), 403, "DENIED")
    assert_error(api.request("DELETE", image, "manifests/v1"), 403, "DENIED")
    assert_error(api.request("DELETE", image, f"manifests/{digest}"), 403, "DENIED")
    assert_error(api.request("DELETE", image, f"blobs/{layer}"), 403, "DENIED")
    assert api.get(image, "manifests/v1").content == got.content


def test_deny_refuses_a_mount(server: PortwayServer) -> None:
    source = Api(server, "docker-allow", "path")
    data = random_bytes(300)
    digest = source.push_blob("src", data)
    target = Api(server, "docker-readonly", "path")
    r = target.request(
        "POST", "mounted", "blobs/uploads/", params={"mount": digest, "from": "docker-allow/src"}
    )
    assert_error(r, 403, "DENIED")
    assert target.head("mounted", f"blobs/{digest}").status_code == 404


def test_deny_refuses_every_step_of_a_session_opened_before(server: PortwayServer) -> None:
    """A session opened while the repository was writable gets no further once it is
    read-only: no chunk, no closing PUT, and no blob to HEAD afterwards."""
    api = Api(server, "docker-readonly")
    second = random_bytes(1000)
    whole = FIRST_CHUNK + second
    patched = OPENED["patched"]
    assert_error(api.http.patch(patched, data=second, timeout=30), 403, "DENIED")
    r = api.http.put(patched, params={"digest": sha256(FIRST_CHUNK)}, timeout=30)
    assert_error(r, 403, "DENIED")
    r = api.http.put(patched, params={"digest": sha256(whole)}, data=second, timeout=30)
    assert_error(r, 403, "DENIED")
    data = random_bytes(500)
    r = api.http.put(OPENED["opened"], params={"digest": sha256(data)}, data=data, timeout=30)
    assert_error(r, 403, "DENIED")
    for digest in (sha256(FIRST_CHUNK), sha256(whole), sha256(data)):
        assert api.head(LATE_IMAGE, f"blobs/{digest}").status_code == 404, digest
        assert not any(digest.partition(":")[2] in p.name for p in blob_files(server)), digest
