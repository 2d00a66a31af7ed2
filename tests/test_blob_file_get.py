"""A blob too big to be answered from memory (over 64 KiB) is sent from its file: whole, with
its length and digest, twice on one keep-alive connection, with the request metrics and the
access log on (their middleware sends each response itself before aiohttp finishes it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from api_support import Api, random_bytes, running_server, unique
from support.server import PortwayServer

SIZE = 3 * 1024 * 1024 + 17


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    with running_server(tmp_path_factory, "blob-file-get") as s:
        yield s


@pytest.mark.parametrize("layout", ["nexus", "path"])
def test_big_blob_get(server: PortwayServer, layout: str) -> None:
    api = Api(server, layout=layout)
    image = unique("big")
    data = random_bytes(SIZE)
    digest = api.push_blob(image, data)
    with requests.Session() as session:  # one connection: it must stay usable after each
        for _ in range(2):
            r = session.get(api.url(image, f"blobs/{digest}"), timeout=60)
            assert r.status_code == 200
            assert r.content == data
            assert int(r.headers["Content-Length"]) == SIZE
            assert r.headers["Docker-Content-Digest"] == digest


def test_big_blob_get_without_accept_encoding(server: PortwayServer) -> None:
    import http.client

    api = Api(server, layout="path")
    image = unique("big")
    data = random_bytes(SIZE)
    digest = api.push_blob(image, data)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        for _ in range(2):
            conn.putrequest("GET", api.path(image, f"blobs/{digest}"), skip_accept_encoding=True)
            conn.endheaders()
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.read() == data
    finally:
        conn.close()
