"""SIGHUP reloads the configuration file of a real `portway serve` with two workers: a
repository added to the TOML takes pushes (skopeo) within seconds and is served by both
workers; a bad file is refused with an error line and the configuration in service stays."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import requests

from proxy_support import ACCEPT, v2
from support import toml
from support.engines import skopeo
from support.images import make_oci_layout
from support.ports import free_port
from support.server import PortwayServer

NO_TLS = ("--dest-tls-verify=false",)
APPLIED = "applied; repositories: docker-hosted, added"


def _push(image_ref: str, dest: str) -> bool:
    got = skopeo("copy", "--quiet", *NO_TLS, image_ref, f"docker://{dest}", check=False)
    return got.returncode == 0


def _served_by(server: PortwayServer, repository: str, image: str, tries: int = 200) -> set[str]:
    """Fresh connections until both workers answered (X-Request-Id's prefix is per process)."""
    workers: set[str] = set()
    for _ in range(tries):
        reply = requests.get(
            v2(server, repository, f"{image}/manifests/v1"),
            headers={"Accept": ACCEPT, "Connection": "close"},
            timeout=30,
        )
        assert reply.status_code == 200, (reply.status_code, reply.text[:300])
        workers.add(reply.headers["X-Request-Id"].partition("-")[0])
        if len(workers) == 2:
            break
    return workers


def test_sighup_adds_a_repository_and_refuses_a_bad_file(tmp_path: Path) -> None:
    image = make_oci_layout(tmp_path / "layout", "v1", layers=1, layer_size=64 * 1024)
    server = PortwayServer(tmp_path / "portway", workers=2)
    server.start(timeout=60)
    try:
        pid = server.pid
        assert pid is not None
        assert _push(image.ref, server.image("app:v1"))
        doc = server._config()
        doc["repository"] = [*doc["repository"], {"name": "added", "type": "hosted",
                                                   "path_routing": True}]  # fmt: skip
        doc["server"] = {**doc["server"], "listen": "127.0.0.1:1", "log_level": "info"}
        server.config_path.write_text(toml.dumps(doc))
        sent = time.monotonic()
        os.kill(pid, signal.SIGHUP)
        while not _push(image.ref, server.image("app:v1", "added")):
            assert time.monotonic() - sent < 10, "the added repository took no push in 10 s"
            time.sleep(0.2)
        # The push reached one worker; each worker logs when it applied the file (README:
        # the signal is forwarded to every worker, each applies it within a second).
        while server.log().count(APPLIED) < 2:
            assert time.monotonic() - sent < 10, server.log()[-2000:]
            time.sleep(0.05)
        took = time.monotonic() - sent
        assert _served_by(server, "added", "app") == _served_by(server, "docker-hosted", "app")
        assert len(_served_by(server, "added", "app")) == 2
        assert took < 10
        log = server.log()
        # listen needs a restart: named in the log, and the server still listens where it did
        assert "applied only at a restart: server.listen" in log

        # A bad file: refused by each worker (and the parent), the configuration stays.
        server.config_path.write_text("[server\nlisten = ")
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while server.log().count("not applied, the configuration in service stays") < 3:
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.2)
        assert server.alive()
        assert len(_served_by(server, "added", "app")) == 2
        assert _push(image.ref, server.image("app:v2", "added"))
    finally:
        server.stop()


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def _applied_by(log: str, pid: int) -> bool:
    return any(f"[{pid}]: SIGHUP: " in ln and APPLIED in ln for ln in log.splitlines())


def test_a_sighup_that_comes_while_a_worker_starts_is_applied(tmp_path: Path) -> None:
    """A worker that gets SIGHUP before its event loop runs (here: the replacement of a
    drained worker, signalled as soon as it exists) applies the file once it can; it is not
    killed by the signal and does not go on with the settings it was started with."""
    server = PortwayServer(tmp_path / "portway", workers=2)
    server.start(timeout=60)
    try:
        pid = server.pid
        assert pid is not None
        doc = server._config()
        doc["repository"] = [*doc["repository"], {"name": "added", "type": "hosted",
                                                   "path_routing": True}]  # fmt: skip
        server.config_path.write_text(toml.dumps(doc))  # the parent is not told: its workers
        before = _children(pid)  # start with the settings it holds, without `added`
        deadline = time.monotonic() + 30
        while not (workers := [p for p in before if f"worker {p} listening" in server.log()]):
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.05)
        os.kill(workers[0], signal.SIGTERM)  # drains; the parent starts a replacement at once
        while not (new := _children(pid) - before):
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.001)
        (replacement,) = new
        os.kill(replacement, signal.SIGHUP)
        assert f"worker {replacement} listening" not in server.log()  # it was still starting
        deadline = time.monotonic() + 60
        while not _applied_by(server.log(), replacement):
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.05)
        assert "killed" not in server.log() and server.alive()
    finally:
        server.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_sighup_applies_connectors_hosts_and_the_access_log_format(tmp_path: Path) -> None:
    """One worker (it holds the listeners itself): the file's new `[[connector]]` listens and
    routes, a new `[[host]]` routes, `log_format` switches to JSON; a connector made through
    the API stays; the connector taken out of the file stops listening."""
    image = make_oci_layout(tmp_path / "layout", "v1", layers=1, layer_size=64 * 1024)
    server = PortwayServer(tmp_path / "portway", workers=1)
    server.start(timeout=60)
    try:
        pid = server.pid
        assert pid is not None
        assert _push(image.ref, server.image("app:v1"))
        made = requests.post(f"{server.url}/api/v1/connectors",
                             json={"listen": f"127.0.0.1:{free_port()}",
                                   "repository": "docker-hosted"})  # fmt: skip
        assert made.status_code == 201 and made.json()["state"] == "listening", made.text
        api_port = int(made.json()["listen"].rpartition(":")[2])
        port = free_port()
        doc = server._config()
        doc["connector"] = [{"listen": f"127.0.0.1:{port}", "repository": "docker-hosted"}]
        doc["host"] = [{"name": "mapped.example.test", "repository": "docker-hosted"}]
        doc["server"] = {**doc["server"], "log_format": "json"}
        server.config_path.write_text(toml.dumps(doc))
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not _accepts(port):
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.05)
        manifest = requests.get(f"http://127.0.0.1:{port}/v2/app/manifests/v1",
                                headers={"Accept": ACCEPT})  # fmt: skip
        assert manifest.status_code == 200, manifest.text
        host = {"Accept": ACCEPT, "Host": "mapped.example.test"}
        mapped = requests.get(f"{server.url}/v2/app/manifests/v1", headers=host)
        assert mapped.status_code == 200, mapped.text
        listed = requests.get(f"{server.url}/api/v1/connectors").json()["items"]
        assert {(c["listen"].rpartition(":")[2], c["managedBy"]) for c in listed} == {
            (str(port), "file"), (str(api_port), "api")
        }
        time.sleep(1.5)  # the access log is written in batches
        lines = [ln for ln in server.log().splitlines() if ln.startswith("{")]
        assert any('"request_id"' in ln for ln in lines), server.log()[-2000:]
        assert "applied only at a restart" not in server.log()

        doc["connector"] = []
        server.config_path.write_text(toml.dumps(doc))
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _accepts(port):
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.05)
        assert _accepts(api_port)  # the API's connector stays
    finally:
        server.stop()
