"""Blob uploads: monolithic, POST + PUT, chunked PATCH, streamed PATCH, session status and
cancel, cross-repository mount, digest verification."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
import requests

from api_support import (
    API_VERSION,
    Api,
    assert_error,
    blob_files,
    random_bytes,
    running_server,
    sha256,
    sha512,
    unique,
)
from support.server import PortwayServer

SECOND_REPO = "docker-second"
NOT_ROUTED = "docker-private"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    repositories = [
        {"name": "docker-hosted", "type": "hosted", "path_routing": True},
        {"name": SECOND_REPO, "type": "hosted", "path_routing": True},
        {"name": NOT_ROUTED, "type": "hosted"},
    ]
    with running_server(tmp_path_factory, "api-uploads", repositories=repositories) as s:
        yield s


@pytest.fixture(params=["nexus", "path"])
def api(server: PortwayServer, request: pytest.FixtureRequest) -> Api:
    return Api(server, layout=request.param)


def session(api: Api, image: str) -> str:
    """Start an upload; returns its absolute URL."""
    r = api.start_upload(image)
    return api.absolute(r.headers["Location"])


def check_session_headers(api: Api, r: requests.Response, offset: int) -> None:
    location = r.headers["Location"]
    assert location.startswith(api.prefix + "/v2/")
    uid = r.headers["Docker-Upload-UUID"]
    assert uid and uid in location
    assert r.headers["Range"] == f"0-{max(offset - 1, 0)}"
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION


# -- monolithic ----------------------------------------------------------------------------
def test_monolithic_post(api: Api) -> None:
    image = unique("mono")
    data = random_bytes(4096)
    r = api.request("POST", image, "blobs/uploads/", params={"digest": sha256(data)}, data=data)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == sha256(data)
    assert r.headers["Location"] == api.path(image, f"blobs/{sha256(data)}")
    assert api.get(image, f"blobs/{sha256(data)}").content == data


def test_monolithic_post_digest_mismatch_leaves_nothing(api: Api, server: PortwayServer) -> None:
    image = unique("mono-bad")
    data = random_bytes(4096)
    before = blob_files(server)
    wrong = sha256(b"something else")
    r = api.request("POST", image, "blobs/uploads/", params={"digest": wrong}, data=data)
    assert_error(r, 400, "DIGEST_INVALID")
    assert api.head(image, f"blobs/{wrong}").status_code == 404
    assert api.head(image, f"blobs/{sha256(data)}").status_code == 404
    assert blob_files(server) == before


def test_post_then_put(api: Api) -> None:
    image = unique("post-put")
    data = random_bytes(5000)
    r = api.start_upload(image)
    check_session_headers(api, r, 0)
    put = api.http.put(
        api.absolute(r.headers["Location"]),
        params={"digest": sha256(data)},
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert put.status_code == 201, put.text
    assert put.headers["Location"] == api.path(image, f"blobs/{sha256(data)}")
    assert put.headers["Docker-Content-Digest"] == sha256(data)
    assert api.get(image, f"blobs/{sha256(data)}").content == data


def test_sha512_upload(api: Api) -> None:
    image = unique("sha512")
    data = random_bytes(7000)
    url = session(api, image)
    r = api.http.patch(url, data=data[:3000], headers={"Content-Range": "0-2999"}, timeout=30)
    assert r.status_code == 202
    r = api.http.put(
        api.absolute(r.headers["Location"]),
        params={"digest": sha512(data)},
        data=data[3000:],
        timeout=30,
    )
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == sha512(data)
    assert api.get(image, f"blobs/{sha512(data)}").content == data


# -- chunked -------------------------------------------------------------------------------
def test_chunked_upload_in_order(api: Api) -> None:
    image = unique("chunked")
    data = random_bytes(30_000)
    url = session(api, image)
    offset = 0
    for size in (10_000, 12_000, 8_000):
        chunk = data[offset : offset + size]
        r = api.http.patch(
            url,
            data=chunk,
            headers={
                "Content-Range": f"{offset}-{offset + size - 1}",
                "Content-Type": "application/octet-stream",
            },
            timeout=30,
        )
        assert r.status_code == 202, r.text
        offset += size
        check_session_headers(api, r, offset)
        url = api.absolute(r.headers["Location"])
        status = api.http.get(url, timeout=30)
        assert status.status_code == 204
        assert status.content == b""
        check_session_headers(api, status, offset)
    r = api.http.put(url, params={"digest": sha256(data)}, timeout=30)
    assert r.status_code == 201, r.text
    assert api.get(image, f"blobs/{sha256(data)}").content == data
    # the session is gone once the blob is published
    assert_error(api.http.get(url, timeout=30), 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize(
    "content_range",
    ["0-999", "500-1499", "2000-2999", "1001-2000"],  # repeated, overlapping, gap, off by one
)
def test_out_of_order_chunk_is_416(api: Api, content_range: str) -> None:
    image = unique("order")
    data = random_bytes(2000)
    url = session(api, image)
    r = api.http.patch(url, data=data[:1000], headers={"Content-Range": "0-999"}, timeout=30)
    assert r.status_code == 202
    start, end = (int(x) for x in content_range.split("-"))
    r = api.http.patch(
        url,
        data=random_bytes(end - start + 1),
        headers={"Content-Range": content_range},
        timeout=30,
    )
    assert_error(r, 416, "RANGE_INVALID")
    assert r.headers["Range"] == "0-999"
    assert uuid.UUID(r.headers["Docker-Upload-UUID"])
    # the session is untouched and continues where it was
    status = api.http.get(url, timeout=30)
    assert status.status_code == 204 and status.headers["Range"] == "0-999"
    r = api.http.patch(url, data=data[1000:], headers={"Content-Range": "1000-1999"}, timeout=30)
    assert r.status_code == 202
    assert r.headers["Range"] == "0-1999"
    r = api.http.put(url, params={"digest": sha256(data)}, timeout=30)
    assert r.status_code == 201
    assert api.get(image, f"blobs/{sha256(data)}").content == data


@pytest.mark.parametrize("content_range", ["bytes", "a-b", "10", "-5", "5-"])
def test_malformed_content_range_is_416(api: Api, content_range: str) -> None:
    image = unique("badrange")
    url = session(api, image)
    r = api.http.patch(url, data=b"abc", headers={"Content-Range": content_range}, timeout=30)
    assert_error(r, 416, "RANGE_INVALID")
    assert r.headers["Range"] == "0-0"


def test_content_range_disagreeing_with_length_is_refused(api: Api) -> None:
    url = session(api, unique("len"))
    r = api.http.patch(url, data=b"abcdef", headers={"Content-Range": "0-9"}, timeout=30)
    assert r.status_code == 416, r.text
    status = api.http.get(url, timeout=30)
    assert status.headers["Range"] == "0-0"


def test_streamed_patch_without_content_range(api: Api) -> None:
    image = unique("stream")
    data = random_bytes(200_000)

    def gen() -> Iterator[bytes]:  # chunked transfer encoding, no Content-Length
        for i in range(0, len(data), 16_384):
            yield data[i : i + 16_384]

    url = session(api, image)
    r = api.http.patch(url, data=gen(), timeout=30)
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    # a second streamed PATCH appends
    more = random_bytes(1000)
    r = api.http.patch(api.absolute(r.headers["Location"]), data=more, timeout=30)
    assert r.status_code == 202
    assert r.headers["Range"] == f"0-{len(data) + len(more) - 1}"
    r = api.http.put(url, params={"digest": sha256(data + more)}, timeout=30)
    assert r.status_code == 201, r.text
    assert api.get(image, f"blobs/{sha256(data + more)}").content == data + more


def test_closing_put_with_last_chunk(api: Api) -> None:
    image = unique("last-chunk")
    data = random_bytes(3000)
    url = session(api, image)
    r = api.http.patch(url, data=data[:1000], headers={"Content-Range": "0-999"}, timeout=30)
    assert r.status_code == 202
    r = api.http.put(
        url,
        params={"digest": sha256(data)},
        data=data[1000:],
        headers={"Content-Range": "1000-2999", "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    assert api.get(image, f"blobs/{sha256(data)}").content == data


def test_closing_put_with_misplaced_last_chunk(api: Api) -> None:
    image = unique("last-bad")
    data = random_bytes(3000)
    url = session(api, image)
    api.http.patch(url, data=data[:1000], headers={"Content-Range": "0-999"}, timeout=30)
    r = api.http.put(
        url,
        params={"digest": sha256(data)},
        data=data[1000:],
        headers={"Content-Range": "1500-3499"},
        timeout=30,
    )
    assert_error(r, 416, "RANGE_INVALID")
    assert r.headers["Range"] == "0-999"
    assert api.head(image, f"blobs/{sha256(data)}").status_code == 404


def test_closing_put_without_digest(api: Api) -> None:
    image = unique("nodigest")
    url = session(api, image)
    r = api.http.put(url, data=b"abc", timeout=30)
    assert_error(r, 400, "DIGEST_INVALID")


def test_closing_put_digest_mismatch(api: Api, server: PortwayServer) -> None:
    image = unique("mismatch")
    data = random_bytes(4000)
    before = blob_files(server)
    url = session(api, image)
    api.http.patch(url, data=data, headers={"Content-Range": "0-3999"}, timeout=30)
    r = api.http.put(url, params={"digest": sha256(b"not it")}, timeout=30)
    assert_error(r, 400, "DIGEST_INVALID")
    assert api.head(image, f"blobs/{sha256(b'not it')}").status_code == 404
    assert api.head(image, f"blobs/{sha256(data)}").status_code == 404
    assert blob_files(server) == before
    # after a 4xx the upload is over
    assert_error(api.http.get(url, timeout=30), 404, "BLOB_UPLOAD_UNKNOWN")


def test_closing_put_with_bad_digest_syntax(api: Api) -> None:
    url = session(api, unique("badsyntax"))
    r = api.http.put(url, params={"digest": "sha256:xyz"}, timeout=30)
    assert_error(r, 400, "DIGEST_INVALID")


def test_cancel_session(api: Api) -> None:
    image = unique("cancel")
    url = session(api, image)
    api.http.patch(url, data=b"x" * 100, headers={"Content-Range": "0-99"}, timeout=30)
    r = api.http.delete(url, timeout=30)
    assert r.status_code == 204
    assert r.headers["Docker-Distribution-API-Version"] == API_VERSION
    assert_error(api.http.get(url, timeout=30), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(
        api.http.patch(url, data=b"y", headers={"Content-Range": "100-100"}, timeout=30),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    assert_error(
        api.http.put(url, params={"digest": sha256(b"x" * 100)}, timeout=30),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    assert_error(api.http.delete(url, timeout=30), 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize(
    "upload_id", ["00000000-0000-0000-0000-000000000000", "not-a-session", "x" * 300]
)
def test_unknown_session(api: Api, upload_id: str) -> None:
    image = unique("unknown")
    for method in ("GET", "PATCH", "DELETE"):
        assert_error(
            api.request(method, image, f"blobs/uploads/{upload_id}"), 404, "BLOB_UPLOAD_UNKNOWN"
        )
    r = api.request("PUT", image, f"blobs/uploads/{upload_id}", params={"digest": sha256(b"")})
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


def test_session_belongs_to_its_image(api: Api) -> None:
    url = session(api, unique("owner"))
    upload_id = url.rsplit("/", 1)[1]
    r = api.get(unique("intruder"), f"blobs/uploads/{upload_id}")
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


def test_session_continues_across_layouts(server: PortwayServer) -> None:
    nexus, path = Api(server, layout="nexus"), Api(server, layout="path")
    image = unique("layouts")
    data = random_bytes(2000)
    r = nexus.start_upload(image)
    upload_id = r.headers["Docker-Upload-UUID"]
    r = path.request(
        "PATCH", image, f"blobs/uploads/{upload_id}", data=data, headers={"Content-Range": "0-1999"}
    )
    assert r.status_code == 202
    assert r.headers["Location"].startswith("/v2/docker-hosted/")
    r = nexus.request("PUT", image, f"blobs/uploads/{upload_id}", params={"digest": sha256(data)})
    assert r.status_code == 201


def test_empty_blob(api: Api) -> None:
    image = unique("empty")
    url = session(api, image)
    r = api.http.put(url, params={"digest": sha256(b"")}, timeout=30)
    assert r.status_code == 201, r.text
    h = api.head(image, f"blobs/{sha256(b'')}")
    assert h.status_code == 200 and h.headers["Content-Length"] == "0"


# -- cross-repository mount ----------------------------------------------------------------
def test_mount_from_another_image(api: Api) -> None:
    source, target = unique("src"), unique("dst")
    data = random_bytes(1500)
    digest = api.push_blob(source, data)
    r = api.request(
        "POST",
        target,
        "blobs/uploads/",
        params={"mount": digest, "from": api.name_prefix + source},
    )
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == api.path(target, f"blobs/{digest}")
    assert r.headers["Docker-Content-Digest"] == digest
    assert api.get(target, f"blobs/{digest}").content == data


def test_mount_across_repositories_by_repository_path(server: PortwayServer) -> None:
    first, second = Api(server, layout="path"), Api(server, SECOND_REPO, layout="path")
    data = random_bytes(1500)
    source = unique("src")
    digest = first.push_blob(source, data)
    target = unique("dst")
    r = second.request(
        "POST",
        target,
        "blobs/uploads/",
        params={"mount": digest, "from": f"docker-hosted/{source}"},
    )
    assert r.status_code == 201, r.text
    assert second.get(target, f"blobs/{digest}").content == data
    # the source keeps its blob
    assert first.head(source, f"blobs/{digest}").status_code == 200


@pytest.mark.parametrize(
    "case", ["missing-blob", "missing-image", "bad-from", "no-from", "not-routed"]
)
def test_mount_falls_back_to_a_session(api: Api, server: PortwayServer, case: str) -> None:
    source, target = unique("src"), unique("dst")
    data = random_bytes(800)
    digest = sha256(data)
    if case != "missing-blob":
        api.push_blob(source, data)
    params = {"mount": digest, "from": api.name_prefix + source}
    if case == "missing-blob":
        api.push_blob(source, random_bytes(10))
    elif case == "missing-image":
        params["from"] = api.name_prefix + unique("ghost")
    elif case == "bad-from":
        params["from"] = "Bad/../Name"
    elif case == "no-from":
        del params["from"]
    elif case == "not-routed":
        Api(server, NOT_ROUTED).push_blob(source, data)
        params["from"] = f"{NOT_ROUTED}/{source}" if api.layout == "path" else "x/" + source
    r = api.request("POST", target, "blobs/uploads/", params=params)
    assert r.status_code == 202, r.text
    check_session_headers(api, r, 0)
    assert api.head(target, f"blobs/{digest}").status_code == 404
    # the fallback is a normal session
    put = api.http.put(
        api.absolute(r.headers["Location"]), params={"digest": digest}, data=data, timeout=30
    )
    assert put.status_code == 201


def test_mount_with_bad_digest(api: Api) -> None:
    r = api.request(
        "POST", unique("dst"), "blobs/uploads/", params={"mount": "sha256:nope", "from": "x"}
    )
    assert_error(r, 400, "DIGEST_INVALID")


def test_location_is_relative_with_layout_prefix(api: Api) -> None:
    image = unique("loc")
    r = api.start_upload(image)
    location = r.headers["Location"]
    assert re.fullmatch(
        re.escape(api.path(image, "blobs/uploads/")) + r"[0-9a-f-]{36}", location
    ), location
