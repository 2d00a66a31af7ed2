"""GET /v2/ and the shape of every answer: the API version header and OCI error JSON."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from api_support import API_VERSION, Api, assert_error, errors, running_server, unique
from support.server import PortwayServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    with running_server(tmp_path_factory, "api-base") as s:
        yield s


@pytest.fixture(params=["nexus", "path"])
def api(server: PortwayServer, request: pytest.FixtureRequest) -> Api:
    return Api(server, layout=request.param)


@pytest.mark.parametrize(
    "path", ["/v2/", "/v2", "/repository/docker-hosted/v2/", "/repository/docker-hosted/v2"]
)
def test_base_endpoint(server: PortwayServer, path: str) -> None:
    r = requests.get(server.url + path, timeout=10, allow_redirects=False)
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION
    assert r.json() == {}
    head = requests.head(server.url + path, timeout=10, allow_redirects=False)
    assert head.status_code == 200
    assert head.headers["Docker-Distribution-API-Version"] == API_VERSION


def test_base_endpoint_refuses_writes(server: PortwayServer) -> None:
    r = requests.post(server.url + "/v2/", timeout=10)
    assert r.status_code == 405
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION
    assert errors(r)


def test_unknown_repository_on_nexus_path(server: PortwayServer) -> None:
    r = requests.get(f"{server.url}/repository/nope/v2/img/tags/list", timeout=10)
    assert_error(r, 404, "NAME_UNKNOWN")


def test_unknown_repository_on_repository_path(server: PortwayServer) -> None:
    r = requests.get(f"{server.url}/v2/nope/img/manifests/latest", timeout=10)
    assert_error(r, 404, "NAME_UNKNOWN")


def test_outside_the_api(server: PortwayServer) -> None:
    r = requests.get(f"{server.url}/definitely/not/here", timeout=10)
    assert r.status_code == 404
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION
    assert errors(r)


def test_unknown_endpoint_under_v2(api: Api) -> None:
    r = api.get(unique("img"), "nonsense/thing")
    assert r.status_code == 404
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION
    assert errors(r)


def test_method_not_allowed(api: Api) -> None:
    r = api.request("POST", unique("img"), "tags/list")
    assert_error(r, 405, "UNSUPPORTED")
    r = api.request("PATCH", unique("img"), "manifests/latest")
    assert_error(r, 405, "UNSUPPORTED")


def test_catalog_is_read_only(server: PortwayServer) -> None:
    r = requests.delete(f"{server.url}/v2/_catalog", timeout=10)
    assert_error(r, 405, "UNSUPPORTED")


@pytest.mark.parametrize(
    ("method", "rest", "status", "code"),
    [
        ("GET", "manifests/latest", 404, "MANIFEST_UNKNOWN"),
        ("HEAD", "manifests/latest", 404, None),
        ("GET", "blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
        ("HEAD", "blobs/sha256:" + "0" * 64, 404, None),
        ("GET", "tags/list", 404, "NAME_UNKNOWN"),
        ("GET", "blobs/uploads/00000000-0000-0000-0000-000000000000", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("DELETE", "manifests/sha256:" + "1" * 64, 404, "MANIFEST_UNKNOWN"),
        ("DELETE", "blobs/sha256:" + "1" * 64, 404, "BLOB_UNKNOWN"),
    ],
)
def test_errors_carry_version_header_and_oci_body(
    api: Api, method: str, rest: str, status: int, code: str | None
) -> None:
    r = api.request(method, unique("missing"), rest)
    assert r.status_code == status
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION
    if code is None:  # HEAD: no body
        assert r.content == b""
        return
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert code in [e["code"] for e in body["errors"]]
    for entry in body["errors"]:
        assert isinstance(entry["message"], str)


def test_success_carries_version_header(api: Api) -> None:
    image = unique("ok")
    digest, _ = api.push_image(image)
    for r in (
        api.get(image, "manifests/latest"),
        api.head(image, f"manifests/{digest}"),
        api.get(image, "tags/list"),
        api.request("POST", image, "blobs/uploads/"),
    ):
        assert r.status_code < 300
        assert r.headers["Docker-Distribution-API-Version"] == API_VERSION
