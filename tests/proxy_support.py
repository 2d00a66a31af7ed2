"""Helpers shared by the proxy, group and search tests: repository configs, raw HTTP through
a Portway repository, a killable TCP relay in front of an upstream, access-log counting."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from support.ports import free_port
from support.process import ManagedProcess, port_open
from support.server import PortwayServer

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def hosted(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "hosted", "path_routing": True, **extra}


def proxy(name: str, remote_url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "proxy", "path_routing": True, "remote_url": remote_url, **extra}


def group(name: str, members: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "group", "path_routing": True, "members": members, **extra}


def v2(server: PortwayServer, repository: str, path: str) -> str:
    """`http://HOST/repository/REPO/v2/PATH` (the Nexus layout)."""
    return f"{server.repository_url(repository)}/v2/{path.lstrip('/')}"


def get_manifest(server: PortwayServer, repository: str, image: str, ref: str) -> requests.Response:
    return requests.get(
        v2(server, repository, f"{image}/manifests/{ref}"), headers={"Accept": ACCEPT}, timeout=60
    )


def get_blob(server: PortwayServer, repository: str, image: str, digest: str) -> requests.Response:
    return requests.get(v2(server, repository, f"{image}/blobs/{digest}"), timeout=120)


def oci_error(resp: requests.Response) -> tuple[str, str]:
    """(code, message) of the first OCI error in a response body."""
    doc = resp.json()
    first = doc["errors"][0]
    return first["code"], first.get("message", "")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached_blob_files(server: PortwayServer) -> list[Path]:
    """Every published blob file of a Portway data directory (the spool is elsewhere)."""
    root = server.data_dir / "storage" / "blobs"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def blob_is_cached(server: PortwayServer, digest: str) -> bool:
    hexpart = digest.split(":", 1)[1]
    return any(p.name == hexpart for p in cached_blob_files(server))


def cached_soon(server: PortwayServer, digest: str, within: float = 10.0) -> bool:
    """Is the blob in the cache within `within` seconds? A fill releases the clients once
    the digest verified, before it links the blob into the cache (repos/proxy_blobs.py)."""
    deadline = time.monotonic() + within
    while not blob_is_cached(server, digest):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def blob_gets(access_log: str, digest: str) -> int:
    """How many `GET .../blobs/DIGEST` lines a distribution access log holds."""
    pattern = re.compile(r'"GET [^"]*/blobs/' + re.escape(digest) + r" HTTP")
    return len(pattern.findall(access_log))


def blob_heads(access_log: str, digest: str) -> int:
    """How many `HEAD .../blobs/DIGEST` lines a distribution access log holds."""
    pattern = re.compile(r'"HEAD [^"]*/blobs/' + re.escape(digest) + r" HTTP")
    return len(pattern.findall(access_log))


def manifest_requests(access_log: str, name: str) -> int:
    pattern = re.compile(r'"(?:GET|HEAD) /v2/' + re.escape(name) + r"/manifests/")
    return len(pattern.findall(access_log))


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def skopeo_digest(path: Path) -> str:
    return path.read_text().strip()


def layout_blobs(layout: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (layout / "blobs" / "sha256").iterdir()}


def index_of(layout: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((layout / "index.json").read_text())
    return doc


# -- a TCP relay that can be killed mid-transfer ----------------------------------------------

_RELAY = r"""
import asyncio, sys
listen_port, target_port, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

async def pipe(reader, writer, throttle):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
            if throttle and rate:
                await asyncio.sleep(len(data) / rate)
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()

async def serve(cr, cw):
    try:
        ur, uw = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        cw.close()
        return
    await asyncio.gather(pipe(cr, uw, False), pipe(ur, cw, True))

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


class Relay:
    """`python -c RELAY` forwarding 127.0.0.1:port to a target port, answers throttled to
    `rate` bytes/s; `kill()` is an upstream dying (SIGKILL), `start()` brings it back."""

    def __init__(self, root: Path, target_port: int, rate: int = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            [sys.executable, "-c", _RELAY, str(self.port), str(target_port), str(rate)],
            root / f"relay-{self.port}.log",
        )

    def start(self) -> Relay:
        self.process.start()
        self.process.wait_until(lambda: port_open("127.0.0.1", self.port), 10, "relay port")
        return self

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()
