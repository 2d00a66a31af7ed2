"""Bad input: invalid names, tags and digests, malformed manifests, truncated bodies and
clients that vanish mid-upload. Each gets a 400-class OCI error (never a 500) or a clean
abort; the server stays up and nothing partial becomes visible."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from api_support import (
    API_VERSION,
    OCI_MANIFEST,
    Api,
    assert_error,
    blob_files,
    canonical,
    random_bytes,
    raw_exchange,
    raw_status,
    running_server,
    sha256,
    unique,
    upload_files,
)
from support.server import PortwayServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    with running_server(tmp_path_factory, "api-bad-input") as s:
        yield s


@pytest.fixture
def api(server: PortwayServer) -> Iterator[Api]:
    yield Api(server)
    # after every test: the server is up and answers
    r = Api(server).http.get(server.url + "/v2/", timeout=10)
    assert r.status_code == 200
    assert server.alive()


def raw(
    server: PortwayServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A request with the path sent exactly as given (no dot-segment normalisation)."""
    host, port = server.host.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def check_oci_error(
    status: int, headers: dict[str, str], body: bytes, codes: set[str], statuses: set[int]
) -> None:
    assert status in statuses, (status, body[:300])
    assert headers.get("docker-distribution-api-version") == API_VERSION
    found = {e["code"] for e in json.loads(body)["errors"]}
    assert found & codes, (found, body[:300])


# -- names ---------------------------------------------------------------------------------
BAD_NAMES = [
    "a/../b",
    "../etc",
    "img/..",
    "a/./b",
    "..",
    "a%2F..%2Fb",
    "UPPER",
    "Mixed/case",
    "a" * 300,
    "/".join(["abcdefghij"] * 30),  # 329 characters of valid components
    "a//b",
    "-lead",
    "trail-",
    "a__-b",
    "sp%20ace",
    "a/b%00c",
]


@pytest.mark.parametrize("layout", ["nexus", "path"])
@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize(
    ("method", "rest"),
    [
        ("GET", "tags/list"),
        ("GET", "manifests/latest"),
        ("PUT", "manifests/latest"),
        ("GET", "blobs/sha256:" + "0" * 64),
        ("POST", "blobs/uploads/"),
    ],
)
def test_invalid_names(api: Api, layout: str, name: str, method: str, rest: str) -> None:
    prefix = "/repository/docker-hosted/v2/" if layout == "nexus" else "/v2/docker-hosted/"
    body = b"{}" if method in ("PUT", "POST") else None
    status, headers, text = raw(api.server, method, f"{prefix}{name}/{rest}", body)
    check_oci_error(status, headers, text, {"NAME_INVALID"}, {400})


def test_long_valid_name_is_accepted(api: Api) -> None:
    name = "/".join([unique("n")] + ["abcdefghij"] * 15)[:200].rstrip("/-_.")
    data = random_bytes(10)
    digest = api.push_blob(name, data)
    assert api.get(name, f"blobs/{digest}").content == data


def test_repository_path_names_the_repository_only(api: Api) -> None:
    status, headers, text = raw(api.server, "GET", "/v2/docker-hosted/tags/list")
    check_oci_error(status, headers, text, {"NAME_UNKNOWN", "NAME_INVALID"}, {400, 404})
    status, headers, text = raw(api.server, "GET", "/v2/../docker-hosted/img/tags/list")
    assert 400 <= status < 500


# -- tags ----------------------------------------------------------------------------------
BAD_TAGS = ["-dash", ".dot", "a" * 129, "sp%20ace", "t%2Fslash", "%C3%A9", "a+b", "a%00"]


@pytest.mark.parametrize("tag", BAD_TAGS)
def test_invalid_tags(api: Api, tag: str) -> None:
    image = unique("tags")
    _digest, body = api.push_image(image, None)
    path = api.path(image, f"manifests/{tag}")
    status, headers, text = raw(api.server, "PUT", path, body, {"Content-Type": OCI_MANIFEST})
    check_oci_error(status, headers, text, {"TAG_INVALID"}, {400})
    # a reference that is neither a tag nor a digest names no manifest: 404, as the OCI
    # distribution spec asks of GET, HEAD and DELETE (only a push calls it invalid)
    status, headers, text = raw(api.server, "GET", path)
    check_oci_error(status, headers, text, {"MANIFEST_UNKNOWN"}, {404})
    status, headers, text = raw(api.server, "DELETE", path)
    check_oci_error(status, headers, text, {"MANIFEST_UNKNOWN"}, {404})
    status, _headers, _text = raw(api.server, "HEAD", path)
    assert status == 404
    assert api.get(image, "tags/list").json()["tags"] == []


def test_longest_valid_tag(api: Api) -> None:
    image = unique("tags")
    tag = "t" * 128
    api.push_image(image, tag)
    assert api.get(image, "tags/list").json()["tags"] == [tag]


# -- digests -------------------------------------------------------------------------------
BAD_DIGESTS = [
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 65,
    "sha512:" + "0" * 64,
    "sha256:" + "Z" * 64,
    "md5:" + "0" * 32,
    "blake3:" + "0" * 64,
    "sha256:",
    ":" + "0" * 64,
    "sha256::" + "0" * 64,
    "SHA256:" + "0" * 64,
    "sha256:" + "0" * 2000,
]


@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_invalid_digests(api: Api, digest: str) -> None:
    image = unique("digests")
    manifest_digest, body = api.push_image(image, "v1")
    # reading or deleting by what is no digest finds no manifest (OCI: 404)
    assert_error(api.get(image, f"manifests/{digest}"), 404, "MANIFEST_UNKNOWN")
    assert_error(api.request("DELETE", image, f"manifests/{digest}"), 404, "MANIFEST_UNKNOWN")
    assert api.head(image, f"manifests/{digest}").status_code == 404
    for r in (
        api.put_manifest(image, digest, body),
        api.get(image, f"blobs/{digest}"),
        api.request("DELETE", image, f"blobs/{digest}"),
        api.get(image, f"referrers/{digest}"),
        api.request("POST", image, "blobs/uploads/", params={"digest": digest}, data=b"x"),
    ):
        assert_error(r, 400, "DIGEST_INVALID")
    url = api.absolute(api.start_upload(image).headers["Location"])
    assert_error(
        api.http.put(url, params={"digest": digest}, data=b"x", timeout=30), 400, "DIGEST_INVALID"
    )
    assert api.head(image, f"manifests/{manifest_digest}").status_code == 200


# -- malformed manifests -------------------------------------------------------------------
def _layerless(**changes: Any) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/x", "digest": sha256(b"c"), "size": 1},
        "layers": [],
    }
    doc.update(changes)
    return canonical({k: v for k, v in doc.items() if v is not None})


MALFORMED = {
    "empty": b"",
    "not-json": b"this is not json",
    "truncated-json": b'{"schemaVersion": 2, "config": {',
    "array": b"[]",
    "string": b'"manifest"',
    "null": b"null",
    "not-utf8": b'{"schemaVersion": 2, "x": "\xff\xfe"}',
    "no-schema": _layerless(schemaVersion=None),
    "schema-3": _layerless(schemaVersion=3),
    "schema-string": _layerless(schemaVersion="2"),
    "config-missing": _layerless(config=None),
    "config-string": _layerless(config="sha256:abc"),
    "config-bad-digest": _layerless(config={"mediaType": "a/b", "digest": "sha256:x", "size": 1}),
    "config-negative-size": _layerless(
        config={"mediaType": "a/b", "digest": sha256(b"c"), "size": -1}
    ),
    "config-size-string": _layerless(
        config={"mediaType": "a/b", "digest": sha256(b"c"), "size": "1"}
    ),
    "config-no-media-type": _layerless(config={"digest": sha256(b"c"), "size": 1}),
    "layers-object": _layerless(layers={"a": 1}),
    "layer-null": _layerless(layers=[None]),
    "media-type-number": _layerless(mediaType=5),
    "annotations-list": _layerless(annotations=["a"]),
    "annotation-value-number": _layerless(
        config={
            "mediaType": "a/b",
            "digest": sha256(b"c"),
            "size": 1,
            "annotations": {"k": 1},
        }
    ),
    "index-without-manifests": canonical(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}
    ),
    "index-entry-garbage": canonical(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [42],
        }
    ),
    "subject-garbage": _layerless(subject="sha256:abc"),
    "artifact-type-number": _layerless(artifactType=7),
    "deep-nesting": b'{"schemaVersion": 2, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "huge-number": b'{"schemaVersion": 2, "x": 1' + b"0" * 5000 + b"}",
    "duplicate-keys": b'{"schemaVersion": 2, "schemaVersion": 1}',
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_manifest(api: Api, case: str) -> None:
    image = unique("malformed")
    body = MALFORMED[case]
    ctype = None if case == "index-without-manifests" else OCI_MANIFEST
    r = api.put_manifest(image, "v1", body, ctype)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert_error(r, 400, "MANIFEST_INVALID")
    assert api.head(image, "manifests/v1").status_code == 404


# -- truncated bodies ----------------------------------------------------------------------
def _check_no_blob(api: Api, server: PortwayServer, image: str, data: bytes) -> None:
    assert api.head(image, f"blobs/{sha256(data)}").status_code == 404
    assert not [p for p in blob_files(server) if p.name == sha256(data).split(":")[1]]


def test_truncated_monolithic_upload(api: Api, server: PortwayServer) -> None:
    image = unique("trunc")
    data = random_bytes(50_000)
    before = set(upload_files(server))
    head = (
        f"POST {api.path(image, 'blobs/uploads/')}?digest={sha256(data)} HTTP/1.1\r\n"
        f"Host: {server.host}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close"
    )
    reply = raw_exchange(server, head, data[:20_000])
    status = raw_status(reply)
    assert status is None or 400 <= status < 500, reply[:300]
    _check_no_blob(api, server, image, data)
    wait_for(lambda: set(upload_files(server)) <= before, "the aborted upload's data is removed")


def test_truncated_manifest(api: Api, server: PortwayServer) -> None:
    image = unique("trunc-manifest")
    _digest, body = api.push_image(image, None)
    head = (
        f"PUT {api.path(image, 'manifests/v1')} HTTP/1.1\r\nHost: {server.host}\r\n"
        f"Content-Type: {OCI_MANIFEST}\r\nContent-Length: {len(body) + 100}\r\nConnection: close"
    )
    reply = raw_exchange(server, head, body)
    status = raw_status(reply)
    assert status is None or 400 <= status < 500, reply[:300]
    assert api.head(image, "manifests/v1").status_code == 404


def _session_at_1000(api: Api, image: str) -> tuple[str, bytes]:
    """An upload session holding its first 1000 bytes: (Location, those bytes)."""
    first = random_bytes(1000)
    location = api.start_upload(image).headers["Location"]
    r = api.http.patch(
        api.absolute(location), data=first, headers={"Content-Range": "0-999"}, timeout=30
    )
    assert r.status_code == 202
    return location, first


def _still_at_1000_and_usable(api: Api, image: str, location: str, first: bytes) -> None:
    """A failed chunk left the session at 1000 bytes and unlocked: the next chunk and the
    closing PUT work, and the blob holds exactly what was accepted."""
    status_r = api.http.get(api.absolute(location), timeout=30)
    assert status_r.status_code == 204
    assert status_r.headers["Range"] == "0-999"
    rest = random_bytes(500)
    r = api.http.patch(
        api.absolute(location), data=rest, headers={"Content-Range": "1000-1499"}, timeout=30
    )
    assert r.status_code == 202, r.text
    r = api.http.put(api.absolute(location), params={"digest": sha256(first + rest)}, timeout=30)
    assert r.status_code == 201
    assert api.get(image, f"blobs/{sha256(first + rest)}").content == first + rest


def test_truncated_chunk_keeps_the_session_where_it_was(api: Api, server: PortwayServer) -> None:
    image = unique("trunc-chunk")
    location, first = _session_at_1000(api, image)
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {server.host}\r\n"
        "Content-Type: application/octet-stream\r\nContent-Range: 1000-5999\r\n"
        "Content-Length: 5000\r\nConnection: close"
    )
    reply = raw_exchange(server, head, random_bytes(2000))
    status = raw_status(reply)
    assert status is None or 400 <= status < 500, reply[:300]
    _still_at_1000_and_usable(api, image, location, first)


def test_truncated_chunked_transfer_encoding(api: Api, server: PortwayServer) -> None:
    image = unique("trunc-te")
    data = random_bytes(4000)
    head = (
        f"POST {api.path(image, 'blobs/uploads/')}?digest={sha256(data)} HTTP/1.1\r\n"
        f"Host: {server.host}\r\nTransfer-Encoding: chunked\r\nConnection: close"
    )
    body = b"%x\r\n" % len(data[:1000]) + data[:1000] + b"\r\n" + b"fa0\r\n" + data[1000:1500]
    reply = raw_exchange(server, head, body)
    status = raw_status(reply)
    assert status is None or 400 <= status < 500, reply[:300]
    _check_no_blob(api, server, image, data)


@pytest.mark.parametrize("value", ["abc", "-5", "1, 2", "99999999999999999999999999"])
def test_garbage_content_length(api: Api, server: PortwayServer, value: str) -> None:
    image = unique("cl")
    head = (
        f"POST {api.path(image, 'blobs/uploads/')}?digest={sha256(b'abc')} HTTP/1.1\r\n"
        f"Host: {server.host}\r\nContent-Length: {value}\r\nConnection: close"
    )
    # The HTTP parser refuses these before any handler runs; the answer is still OCI JSON.
    reply = raw_exchange(server, head, b"abc", half_close=False)
    _check_parser_refusal(reply, 400)
    assert api.head(image, f"blobs/{sha256(b'abc')}").status_code == 404


def _check_parser_refusal(reply: bytes, status: int) -> dict[str, Any]:
    """A refusal by the HTTP parser: `status`, the registry header, one OCI error, and the
    connection closed after it (the reply ends with the body)."""
    head, _, body = reply.partition(b"\r\n\r\n")
    assert raw_status(reply) == status, reply[:300]
    lines = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.decode().partition(":") for line in head.split(b"\r\n")[1:])
    }
    assert lines.get("docker-distribution-api-version") == API_VERSION
    assert lines.get("content-type") == "application/json"
    assert reply.startswith(b"HTTP/1.0 ") or lines.get("connection") == "close"
    (error,) = json.loads(body)["errors"]
    assert error["code"] == "UNSUPPORTED"
    assert error["message"].startswith("malformed HTTP request: ")
    return dict(error)


MALFORMED_HTTP = {
    "bad method": ("G@T /v2/ HTTP/1.1\r\nHost: {host}", b"", 400),
    "bad version": ("GET /v2/ HTTP/7.1\r\nHost: {host}", b"", 400),
    "not http": ("hello there", b"", 400),
    "both lengths": (
        "POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n"
        "Transfer-Encoding: chunked",
        b"3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "bad chunk size": (
        "POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked",
        b"zz\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "header too long": ("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Long: " + "s" * 70000, b"", 431),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_HTTP))
def test_malformed_http_gets_oci_json(api: Api, server: PortwayServer, case: str) -> None:
    head, body, status = MALFORMED_HTTP[case]
    reply = raw_exchange(server, head.format(host=server.host), body, half_close=False)
    error = _check_parser_refusal(reply, status)
    assert "s" * 100 not in error["message"]  # an oversized line is not echoed back
    assert "Traceback" not in server.log()


def test_broken_chunk_after_the_handler_started(api: Api, server: PortwayServer) -> None:
    """A chunk that breaks the framing in a later packet: aiohttp alone leaves the handler
    waiting for body bytes forever; the upload gets a 400 at once, the connection closes and
    the session keeps what it had."""
    image = unique("late-chunk")
    location, first = _session_at_1000(api, image)
    host, port = server.host.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: {server.host}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n3e8\r\n".encode()
            + random_bytes(1000)
            + b"\r\n"
        )
        time.sleep(0.3)  # the handler is reading the body now
        sock.sendall(b"zz\r\nabc\r\n0\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):  # returns b"" once the server closes
            chunks.append(chunk)
    _check_parser_refusal(b"".join(chunks), 400)
    _still_at_1000_and_usable(api, image, location, first)
    assert "Traceback" not in server.log()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    with running_server(tmp_path_factory, "api-body-idle", server={"body_idle_timeout": 1}) as s:
        yield s


def test_stalled_chunk_is_refused_and_frees_the_session(impatient: PortwayServer) -> None:
    """A PATCH whose body stops arriving: after `body_idle_timeout` the client gets a 400
    at once, the session keeps what it had and takes the next chunk (its lock is free)."""
    api = Api(impatient)
    image = unique("stall")
    location, first = _session_at_1000(api, image)
    host, port = impatient.host.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: {impatient.host}\r\n"
            "Content-Range: 1000-5999\r\nContent-Length: 5000\r\n\r\n".encode()
            + random_bytes(2000)
        )
        started = time.monotonic()
        reply = sock.recv(65536)  # the answer comes without the client closing anything
        waited = time.monotonic() - started
    assert raw_status(reply) == 400, reply[:300]
    assert b"BLOB_UPLOAD_INVALID" in reply and b"sent nothing for 1 s" in reply
    assert 0.5 < waited < 8
    _still_at_1000_and_usable(api, image, location, first)


# -- clients that disconnect ---------------------------------------------------------------
def _disconnect_mid_body(server: PortwayServer, head: str, sent: bytes) -> None:
    """Send the head and part of a body, then reset the connection without reading."""
    host, port = server.host.split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head.encode() + b"\r\n\r\n" + sent)
    time.sleep(0.2)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST


def test_disconnect_mid_monolithic_upload(api: Api, server: PortwayServer) -> None:
    image = unique("gone")
    data = random_bytes(8 * 1024 * 1024)
    before = set(upload_files(server))
    head = (
        f"POST {api.path(image, 'blobs/uploads/')}?digest={sha256(data)} HTTP/1.1\r\n"
        f"Host: {server.host}\r\nContent-Length: {len(data)}"
    )
    _disconnect_mid_body(server, head, data[: 3 * 1024 * 1024])
    _check_no_blob(api, server, image, data)
    wait_for(lambda: set(upload_files(server)) <= before, "the aborted upload's data is removed")
    # the same blob can be pushed right after
    assert api.push_blob(image, data) == sha256(data)


def test_disconnect_mid_chunk(api: Api, server: PortwayServer) -> None:
    image = unique("gone-chunk")
    first = random_bytes(100_000)
    r = api.start_upload(image)
    location = r.headers["Location"]
    api.http.patch(
        api.absolute(location), data=first, headers={"Content-Range": "0-99999"}, timeout=30
    )
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {server.host}\r\n"
        "Content-Range: 100000-4294967295\r\nContent-Length: 4294867296"
    )
    _disconnect_mid_body(server, head, random_bytes(2 * 1024 * 1024))

    def back_at_offset() -> bool:
        got = api.http.get(api.absolute(location), timeout=30)
        return got.status_code == 204 and got.headers["Range"] == "0-99999"

    wait_for(back_at_offset, "the session is back at its last acknowledged offset")
    r = api.http.put(api.absolute(location), params={"digest": sha256(first)}, timeout=30)
    assert r.status_code == 201, r.text


def test_disconnect_mid_manifest(api: Api, server: PortwayServer) -> None:
    image = unique("gone-manifest")
    _digest, body = api.push_image(image, None)
    head = (
        f"PUT {api.path(image, 'manifests/v1')} HTTP/1.1\r\nHost: {server.host}\r\n"
        f"Content-Type: {OCI_MANIFEST}\r\nContent-Length: {len(body)}"
    )
    _disconnect_mid_body(server, head, body[: len(body) // 2])
    assert api.head(image, "manifests/v1").status_code == 404


def test_many_aborted_requests_leave_the_server_healthy(api: Api, server: PortwayServer) -> None:
    image = unique("storm")
    log_start = len(server.log())
    for i in range(20):
        head = (
            f"POST {api.path(image, 'blobs/uploads/')}?digest={sha256(bytes([i]))} HTTP/1.1\r\n"
            f"Host: {server.host}\r\nContent-Length: 1000000"
        )
        _disconnect_mid_body(server, head, random_bytes(1000))
    data = random_bytes(1000)
    assert api.push_blob(image, data) == sha256(data)
    # a vanished client is an ordinary event, not a server error
    assert "Traceback" not in server.log()[log_start:]


def wait_for(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)
