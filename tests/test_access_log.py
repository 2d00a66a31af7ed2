"""The access log of a real `portway serve`: one parsed line per request, with the request id
sent back, the client as the trusted-proxy rules decide, the principal and the repository."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from push_support import sha256
from support.server import PortwayServer

_TEXT_RE = re.compile(
    r"portway\.access\[\d+\]: (?P<client>\S+) (?P<principal>\S+) \"(?P<method>\S+) (?P<path>\S+)\" "
    r"(?P<status>\d+) in=(?P<bytes_in>\d+) out=(?P<bytes_out>\d+) (?P<ms>[\d.]+)ms "
    r"route=(?P<route>\S+) repository=(?P<repository>\S+) id=(?P<id>\S+) "
)


def json_lines(srv: PortwayServer) -> dict[str, dict[str, Any]]:
    """Access-log objects by request id (JSON lines stand alone: no log prefix)."""
    found = {}
    for line in srv.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            found[entry["request_id"]] = entry
    return found


def entry_for(srv: PortwayServer, reply: requests.Response) -> dict[str, Any]:
    rid = reply.headers["X-Request-Id"]
    deadline = time.monotonic() + 10
    while (entry := json_lines(srv).get(rid)) is None:
        assert time.monotonic() < deadline, f"no access line for {rid}:\n{srv.log()[-2000:]}"
        time.sleep(0.1)
    return entry


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> PortwayServer:
    srv = PortwayServer(
        tmp_path_factory.mktemp("access-json"),
        security={"enabled": True},
        server={"log_format": "json"},
    ).start(timeout=60)
    yield srv  # type: ignore[misc]
    srv.stop()


def test_json_lines_name_principal_repository_and_bytes(secured: PortwayServer) -> None:
    password = secured.admin_password()
    assert password
    auth = ("admin", password)
    blob = b"portway access log " * 1000
    base = secured.repository_url()
    put = requests.post(
        f"{base}/v2/logs/app/blobs/uploads/?digest={sha256(blob)}",
        data=blob,
        headers={"Content-Type": "application/octet-stream"},
        auth=auth,
        timeout=10,
    )
    assert put.status_code == 201, put.text
    entry = entry_for(secured, put)
    assert entry["principal"] == "admin"
    assert entry["repository"] == "docker-hosted"
    assert (entry["method"], entry["route"], entry["status"]) == ("POST", "upload", 201)
    assert entry["bytes_in"] == len(blob)
    assert entry["client"] == "127.0.0.1"
    assert entry["path"] == "/repository/docker-hosted/v2/logs/app/blobs/uploads/"  # no query
    assert entry["duration_ms"] > 0
    assert entry["ts"].endswith("Z")

    get = requests.get(f"{base}/v2/logs/app/blobs/{sha256(blob)}", auth=auth, timeout=10)
    assert get.status_code == 200 and get.content == blob
    entry = entry_for(secured, get)
    assert (entry["route"], entry["status"], entry["bytes_out"]) == ("blob", 200, len(blob))
    assert entry["principal"] == "admin"

    # Repository path on the shared host: the repository is the path's first segment.
    reply = requests.get(f"{secured.url}/v2/docker-hosted/logs/app/tags/list", auth=auth)
    entry = entry_for(secured, reply)
    assert (entry["route"], entry["repository"]) == ("tags", "docker-hosted")

    anonymous = requests.get(f"{secured.url}/v2/", timeout=10)
    assert anonymous.status_code == 401
    entry = entry_for(secured, anonymous)
    assert (entry["route"], entry["status"], entry["principal"]) == ("ping", 401, "anonymous")


def test_request_id_and_client_from_a_trusted_proxy_are_kept(secured: PortwayServer) -> None:
    headers = {"X-Request-Id": "lb-7f3a/42", "X-Forwarded-For": "203.0.113.9"}
    reply = requests.get(f"{secured.url}/livez", headers=headers, timeout=10)
    assert reply.headers["X-Request-Id"] == "lb-7f3a/42"
    entry = entry_for(secured, reply)
    assert entry["client"] == "203.0.113.9"
    assert entry["route"] == "health"
    # An id that is not one (spaces, too long) is replaced, never echoed.
    for bad in ("two words", "x" * 200):
        reply = requests.get(f"{secured.url}/livez", headers={"X-Request-Id": bad}, timeout=10)
        assert reply.headers["X-Request-Id"] not in (bad, "")


def test_text_lines_and_an_untrusted_peer(tmp_path: Path) -> None:
    srv = PortwayServer(tmp_path, server={"trusted_proxies": ["10.9.0.0/16"]}).start(timeout=60)
    try:
        headers = {"X-Request-Id": "spoofed-1", "X-Forwarded-For": "203.0.113.9"}
        url = f"{srv.url}/v2/docker-hosted/app/manifests/latest"
        reply = requests.get(url, headers=headers, timeout=10)
        assert reply.status_code == 404
        rid = reply.headers["X-Request-Id"]
        assert rid != "spoofed-1"
        deadline = time.monotonic() + 10
        while not (m := [x for x in _TEXT_RE.finditer(srv.log()) if x["id"] == rid]):
            assert time.monotonic() < deadline, srv.log()[-2000:]
            time.sleep(0.1)
        line = m[0]
        assert line["client"] == "127.0.0.1"  # the peer: its X-Forwarded-For does not count
        assert (line["principal"], line["method"], line["path"]) == (
            "-",
            "GET",
            url[len(srv.url) :],
        )
        assert (line["status"], line["route"], line["repository"]) == (
            "404",
            "manifest",
            "docker-hosted",
        )
        assert int(line["bytes_out"]) == len(reply.content)
    finally:
        srv.stop()


def test_access_log_can_be_turned_off(tmp_path: Path) -> None:
    srv = PortwayServer(tmp_path, server={"access_log": False}).start(timeout=60)
    try:
        for _ in range(3):
            assert requests.get(f"{srv.url}/v2/", timeout=10).status_code == 200
        time.sleep(0.5)
        assert "portway.access" not in srv.log()
    finally:
        srv.stop()
