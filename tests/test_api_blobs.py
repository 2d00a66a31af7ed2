"""Blobs: GET, HEAD, DELETE and Range requests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from api_support import (
    API_VERSION,
    Api,
    assert_error,
    random_bytes,
    running_server,
    sha256,
    sha512,
    unique,
)
from support.server import PortwayServer

SIZE = 10_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    with running_server(tmp_path_factory, "api-blobs") as s:
        yield s


@pytest.fixture(params=["nexus", "path"])
def api(server: PortwayServer, request: pytest.FixtureRequest) -> Api:
    return Api(server, layout=request.param)


@pytest.fixture
def blob(api: Api) -> tuple[str, str, bytes]:
    image = unique("blobs")
    data = random_bytes(SIZE)
    return image, api.push_blob(image, data), data


def test_get_and_head(api: Api, blob: tuple[str, str, bytes]) -> None:
    image, digest, data = blob
    r = api.get(image, f"blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Docker-Content-Digest"] == digest
    assert int(r.headers["Content-Length"]) == SIZE
    h = api.head(image, f"blobs/{digest}")
    assert h.status_code == 200
    assert h.content == b""
    assert int(h.headers["Content-Length"]) == SIZE
    assert h.headers["Docker-Content-Digest"] == digest
    assert h.headers["Docker-Distribution-API-Version"] == API_VERSION


def test_blob_is_scoped_to_its_image(api: Api, blob: tuple[str, str, bytes]) -> None:
    _image, digest, _data = blob
    other = unique("other")
    assert_error(api.get(other, f"blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert api.head(other, f"blobs/{digest}").status_code == 404


def test_sha512_blob(api: Api) -> None:
    image = unique("sha512")
    data = random_bytes(3000)
    digest = api.push_blob(image, data, sha512(data))
    r = api.get(image, f"blobs/{digest}")
    assert r.status_code == 200 and r.content == data
    assert r.headers["Docker-Content-Digest"] == digest
    # the same bytes under their sha256 name were never pushed
    assert api.head(image, f"blobs/{sha256(data)}").status_code == 404


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-199", 100, 199),
        ("bytes=9000-", 9000, SIZE - 1),
        ("bytes=-500", SIZE - 500, SIZE - 1),
        ("bytes=9990-20000", 9990, SIZE - 1),  # end past the blob is clipped
        ("bytes=0-0", 0, 0),
        ("bytes=9999-9999", SIZE - 1, SIZE - 1),
    ],
)
def test_range(api: Api, blob: tuple[str, str, bytes], header: str, start: int, end: int) -> None:
    image, digest, data = blob
    r = api.get(image, f"blobs/{digest}", headers={"Range": header})
    assert r.status_code == 206, r.text
    assert r.content == data[start : end + 1]
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert int(r.headers["Content-Length"]) == end - start + 1
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION


@pytest.mark.parametrize(
    "header",
    [
        "bytes=10000-",  # starts at the end
        "bytes=20000-30000",  # entirely past the end
        "bytes=500-100",  # reversed
        "bytes=-0",  # empty suffix
        "bytes=-",
        "bytes=abc-def",
        "items=0-10",
        "bytes=0-10,20-30",  # several ranges: not served
        "garbage",
    ],
)
def test_bad_or_unsatisfiable_range(api: Api, blob: tuple[str, str, bytes], header: str) -> None:
    image, digest, _data = blob
    r = api.get(image, f"blobs/{digest}", headers={"Range": header})
    assert_error(r, 416, "RANGE_INVALID")
    assert r.headers["Content-Range"] == f"bytes */{SIZE}"
    # and the server keeps serving
    assert api.get(image, f"blobs/{digest}").status_code == 200


def test_range_on_missing_blob(api: Api) -> None:
    r = api.get(unique("nothing"), "blobs/sha256:" + "a" * 64, headers={"Range": "bytes=0-1"})
    assert_error(r, 404, "BLOB_UNKNOWN")


def test_delete(api: Api, blob: tuple[str, str, bytes]) -> None:
    image, digest, _data = blob
    r = api.request("DELETE", image, f"blobs/{digest}")
    assert r.status_code == 202
    assert api.head(image, f"blobs/{digest}").status_code == 404
    assert_error(api.get(image, f"blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert_error(api.request("DELETE", image, f"blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_delete_in_one_image_keeps_another(api: Api) -> None:
    data = random_bytes(500)
    first, second = unique("keep-a"), unique("keep-b")
    digest = api.push_blob(first, data)
    api.push_blob(second, data)
    assert api.request("DELETE", first, f"blobs/{digest}").status_code == 202
    assert api.get(second, f"blobs/{digest}").content == data


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
@pytest.mark.parametrize(
    "digest",
    [
        "sha256:abc",  # short
        "sha256:" + "g" * 64,  # not hex
        "sha256:" + "A" * 64,  # upper-case hex
        "md5:" + "0" * 32,  # unknown algorithm
        "sha512:" + "0" * 64,  # wrong length for the algorithm
        "notadigest",
        "sha256:",
    ],
)
def test_bad_digest(api: Api, method: str, digest: str) -> None:
    r = api.request(method, unique("bad"), f"blobs/{digest}")
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION
    if method != "HEAD":
        assert_error(r, 400, "DIGEST_INVALID")
