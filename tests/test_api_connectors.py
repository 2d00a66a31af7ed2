"""`/api/v1/connectors` and `/api/v1/hosts` against a real `portway serve` with 2 workers: a
connector made through the API listens on both workers within a second (skopeo pushes
through it, fresh connections reach both workers), follows an update, and once deleted
refuses connections while a request it had accepted finishes; a host mapping made through
the API routes its Host header at once; the file's are listed and refused for change; a port
in use and other bad definitions get problem answers, not a crash."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from admin_api_support import admin_session, on_both_workers, start_server
from portway.tls.ca import TlsInitResult, init_tls
from support.engines import skopeo
from support.images import OciImage
from support.ports import free_port
from support.server import PortwayServer

CONNECTORS = "/api/v1/connectors"
HOSTS = "/api/v1/hosts"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    root = tmp_path_factory.mktemp("connectors")
    repositories = [
        {"name": "docker-hosted", "type": "hosted", "path_routing": True},
        {"name": "other", "type": "hosted", "path_routing": True},
    ]
    srv = start_server(
        root,
        repositories=repositories,
        connectors=[{"repository": "other"}],
        hosts=[{"name": "file.example.test", "repository": "other"}],
    )
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def admin(server: PortwayServer) -> requests.Session:
    return admin_session(server)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _until(check: object, within: float) -> float:
    """Seconds until `check()` held; fails after `within`."""
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - start < within, f"not within {within}s"
        time.sleep(0.01)
    return time.monotonic() - start


def test_connector_made_through_the_api_listens_on_both_workers_and_stops(
    server: PortwayServer, admin: requests.Session, oci_image: OciImage
) -> None:
    password = server.admin_password() or ""
    creds = ("admin", password)
    port = free_port()
    listen = f"127.0.0.1:{port}"
    body = {"listen": listen, "repository": "docker-hosted"}
    assert admin.get(f"{server.url}{CONNECTORS}").status_code == 200  # the password checked
    sent = time.monotonic()
    made = admin.post(f"{server.url}{CONNECTORS}", json=body)
    assert made.status_code == 201, made.text
    assert made.json()["state"] == "listening"  # the worker that answered listens already
    assert made.json()["managedBy"] == "api"
    # Alone, the node's view is the answering worker's: one node, named by its listener.
    (node,) = made.json()["nodes"]
    assert node["node"].endswith(f":127.0.0.1:{server.port}") and node["state"] == "listening"
    assert made.headers["Location"] == f"{CONNECTORS}/{listen}"
    _until(lambda: _accepts(port), 1.0)
    print(f"connector listening {time.monotonic() - sent:.3f}s after the POST was sent")

    # A docker client's push through the new port lands in the connector's repository.
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"admin:{password}",
           oci_image.ref, f"docker://{listen}/app:v1")  # fmt: skip

    def tags() -> requests.Response:
        return requests.get(f"http://{listen}/v2/app/tags/list", auth=creds,
                            headers={"Connection": "close"}, timeout=10)  # fmt: skip

    seen = on_both_workers(tags, lambda r: r.status_code == 200 and r.json()["tags"] == ["v1"],
                           within=0.0)  # fmt: skip
    assert len(seen) == 2
    path = requests.get(f"{server.url}/v2/docker-hosted/app/tags/list", auth=creds)
    assert path.json()["tags"] == ["v1"]
    nexus = admin.get(f"{server.url}/service/rest/v1/repositories/docker/hosted/docker-hosted")
    assert nexus.json()["docker"]["httpPort"] == port  # Nexus's view shows the new connector

    # An update (If-Match) points the port at another repository, on both workers.
    read = admin.get(f"{server.url}{CONNECTORS}/{listen}")
    assert read.status_code == 200 and read.headers["ETag"] == read.json()["etag"]
    stale = admin.put(f"{server.url}{CONNECTORS}/{listen}", headers={"If-Match": '"nope"'},
                      json={"listen": listen, "repository": "other"})  # fmt: skip
    assert stale.status_code == 412 and stale.headers["Content-Type"].startswith(PROBLEM)
    moved = admin.put(f"{server.url}{CONNECTORS}/{listen}",
                      headers={"If-Match": read.json()["etag"]},
                      json={"listen": listen, "repository": "other"})  # fmt: skip
    assert moved.status_code == 200, moved.text
    assert moved.json()["revision"] == 2
    seen = on_both_workers(tags, lambda r: r.status_code == 404)
    assert len(seen) == 2

    # A request accepted before the delete finishes; new connections are refused.
    started, release = threading.Event(), threading.Event()
    upload = requests.post(f"http://{listen}/v2/app/blobs/uploads/", auth=creds)
    assert upload.status_code == 202, upload.text
    location = upload.headers["Location"]
    target = location if location.startswith("http") else f"http://{listen}{location}"
    answers: list[int] = []

    def body() -> Iterator[bytes]:
        yield b"x" * 1024
        started.set()
        release.wait(10)
        yield b"y" * 1024

    def patch() -> None:
        answers.append(requests.patch(target, data=body(), auth=creds, timeout=30).status_code)

    sender = threading.Thread(target=patch)
    sender.start()
    assert started.wait(10)
    gone = admin.delete(f"{server.url}{CONNECTORS}/{listen}")
    assert gone.status_code == 204, gone.text
    took = _until(lambda: not _accepts(port), 1.0)
    print(f"connector refusing connections {took:.3f}s after the DELETE")
    release.set()
    sender.join(30)
    assert answers == [202]
    listed = admin.get(f"{server.url}{CONNECTORS}").json()["items"]
    assert [c["listen"] for c in listed] == [server.connectors[0]["listen"]]


def test_host_mapping_made_through_the_api_routes_at_once(
    server: PortwayServer, admin: requests.Session, oci_image: OciImage
) -> None:
    password = server.admin_password() or ""
    creds = ("admin", password)
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"admin:{password}",
           oci_image.ref, f"docker://{server.image('mapped:v1')}")  # fmt: skip
    host = "registry.example.test"

    def ask() -> requests.Response:
        return requests.get(f"{server.url}/v2/mapped/tags/list", auth=creds,
                            headers={"Host": host, "Connection": "close"})  # fmt: skip

    assert ask().status_code == 404  # no mapping: "mapped" names no repository
    made = admin.post(f"{server.url}{HOSTS}", json={"name": host, "repository": "docker-hosted"})
    assert made.status_code == 201, made.text
    assert made.json()["managedBy"] == "api"
    seen = on_both_workers(ask, lambda r: r.status_code == 200 and r.json()["tags"] == ["v1"])
    assert len(seen) == 2
    assert admin.get(f"{server.url}{HOSTS}/{host.upper()}").json()["name"] == host
    assert admin.delete(f"{server.url}{HOSTS}/{host}").status_code == 204
    seen = on_both_workers(ask, lambda r: r.status_code == 404)
    assert len(seen) == 2


def test_the_files_connectors_and_hosts_are_listed_and_refused_for_change(
    server: PortwayServer, admin: requests.Session
) -> None:
    listen = server.connectors[0]["listen"]
    connectors = admin.get(f"{server.url}{CONNECTORS}").json()["items"]
    mine = next(c for c in connectors if c["listen"] == listen)
    assert mine["managedBy"] == "file" and mine["state"] == "listening"
    assert mine["definition"]["repository"] == "other"
    hosts = admin.get(f"{server.url}{HOSTS}").json()["items"]
    assert {"name": "file.example.test", "managedBy": "file"}.items() <= hosts[0].items()
    for answer in (
        admin.delete(f"{server.url}{CONNECTORS}/{listen}"),
        admin.put(f"{server.url}{CONNECTORS}/{listen}", json={"listen": listen}),
        admin.delete(f"{server.url}{HOSTS}/file.example.test"),
        admin.post(f"{server.url}{HOSTS}", json={"name": "file.example.test",
                                                 "repository": "other"}),
    ):  # fmt: skip
        assert answer.status_code == 409, answer.text
        assert answer.headers["Content-Type"].startswith(PROBLEM)
    refused = admin.delete(f"{server.url}{CONNECTORS}/{listen}").json()
    assert "managed by the configuration file" in refused["detail"]
    assert _accepts(server.connector_port(0))
    # A repository a connector or host points at cannot be deleted from under it.
    gone = admin.delete(f"{server.url}/api/v1/repositories/other")
    assert gone.status_code == 409


def test_a_port_in_use_and_bad_definitions_get_problem_answers(
    server: PortwayServer, admin: requests.Session, tmp_path: Path
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = holder.getsockname()[1]
    try:
        taken = admin.post(f"{server.url}{CONNECTORS}", json={"listen": f"127.0.0.1:{busy}",
                                                              "repository": "other"})  # fmt: skip
        assert taken.status_code == 409, taken.text
        assert taken.headers["Content-Type"].startswith(PROBLEM)
        assert "Address already in use" in taken.json()["detail"]
    finally:
        holder.close()
    port = free_port()
    for body, status, words in (
        ({"listen": f"localhost:{port}"}, 400, "IP address"),
        ({"listen": "127.0.0.1:0"}, 400, "fixed port"),
        ({"listen": f"127.0.0.1:{port}", "repository": "nowhere"}, 400, "unknown repository"),
        ({"listen": server.host}, 400, "same address"),
        ({"listen": f"127.0.0.1:{port}", "tls": {"cert": "c.pem", "key": "k.pem"}}, 400,
         "absolute path"),
        ({"listen": f"127.0.0.1:{port}", "tls": {"cert": str(tmp_path / "c.pem"),
                                                 "key": str(tmp_path / "k.pem")}}, 400, "tls"),
        ({"listen": f"127.0.0.1:{port}", "colour": "blue"}, 400, "colour"),
        ({"listen": server.connectors[0]["listen"]}, 409, "exists"),
    ):  # fmt: skip
        answer = admin.post(f"{server.url}{CONNECTORS}", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert answer.headers["Content-Type"].startswith(PROBLEM)
        assert words in answer.json()["detail"], (body, answer.json())
    assert not _accepts(port)
    for body, words in (
        ({"name": "not a host", "repository": "other"}, "not a host name"),
        ({"name": "x.example.test", "repository": "nowhere"}, "unknown repository"),
    ):
        answer = admin.post(f"{server.url}{HOSTS}", json=body)
        assert answer.status_code == 400 and words in answer.json()["detail"], answer.text
    assert admin.get(f"{server.url}{HOSTS}/nowhere.test").status_code == 404
    assert requests.get(f"{server.url}{CONNECTORS}").status_code == 401
    assert server.alive()


def test_a_connector_whose_port_is_taken_at_start_is_failed_then_retried(
    server: PortwayServer, admin: requests.Session
) -> None:
    """The process holding the listeners cannot bind a stored connector (another program took
    the port while Portway was stopped): the server starts all the same, the connector shows
    `failed` with the reason, and it listens once the port is free again."""
    port = free_port()
    listen = f"127.0.0.1:{port}"
    made = admin.post(f"{server.url}{CONNECTORS}", json={"listen": listen, "repository": "other"})
    assert made.status_code == 201, made.text
    server.stop()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()

    def shown() -> dict[str, object]:
        answer = admin.get(f"{server.url}{CONNECTORS}/{listen}", headers={"Connection": "close"})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    try:
        server.start(90)
        _until(lambda: shown()["state"] == "failed", 10.0)
        assert "Address already in use" in str(shown()["detail"])
        nodes = shown()["nodes"]
        assert isinstance(nodes, list) and [n["state"] for n in nodes] == ["failed"], nodes
        assert "Address already in use" in str(nodes[0]["detail"])
        assert f"connector {listen} not listening" in server.log()
    finally:
        holder.close()
    _until(lambda: _accepts(port) and shown()["state"] == "listening", 15.0)
    reply = requests.get(f"http://{listen}/v2/", headers={"Connection": "close"})
    assert reply.status_code == 401  # the registry answers on it
    assert admin.delete(f"{server.url}{CONNECTORS}/{listen}").status_code == 204


def _https_worker(port: int, ca: Path) -> str | None:
    """The worker that answered `GET /v2/` over TLS trusting only `ca` (None: refused)."""
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            reply = tls.recv(65536).decode("latin-1")
    except ssl.SSLError:
        return None
    assert reply.startswith("HTTP/1.1 401"), reply[:200]
    rid = next(ln for ln in reply.split("\r\n") if ln.lower().startswith("x-request-id:"))
    return rid.split(":", 1)[1].strip().rsplit("-", 1)[0]


def test_a_tls_connector_gets_new_certificates_on_update(
    server: PortwayServer, admin: requests.Session, tmp_path: Path
) -> None:
    first, second = (init_tls(tmp_path / name, ["127.0.0.1"]) for name in ("one", "two"))

    def tls(result: TlsInitResult) -> dict[str, str]:
        return {"cert": str(result.directory / "127.0.0.1.crt"),
                "key": str(result.directory / "127.0.0.1.key")}  # fmt: skip

    port = free_port()
    listen = f"127.0.0.1:{port}"
    body = {"listen": listen, "repository": "other", "tls": tls(first)}
    made = admin.post(f"{server.url}{CONNECTORS}", json=body)
    assert made.status_code == 201 and made.json()["state"] == "listening", made.text
    workers = {_https_worker(port, first.ca_cert) for _ in range(30)}
    assert None not in workers and len(workers) == 2
    moved = admin.put(f"{server.url}{CONNECTORS}/{listen}",
                      headers={"If-Match": made.json()["etag"]},
                      json={**body, "tls": tls(second)})  # fmt: skip
    assert moved.status_code == 200, moved.text
    _until(lambda: {_https_worker(port, second.ca_cert) for _ in range(10)} - {None} == workers,
           3.0)  # fmt: skip
    assert _https_worker(port, first.ca_cert) is None  # the old certificate is gone
    assert admin.delete(f"{server.url}{CONNECTORS}/{listen}").status_code == 204
