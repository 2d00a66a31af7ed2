"""Clients for the drain tests: a slow 64 MiB download, pull loops, which worker holds what."""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import threading
from dataclasses import dataclass, field

from push_support import MiB, Registry, manifest_for, sha256

BIG = 64 * MiB


def push_image(reg: Registry, image: str) -> tuple[bytes, bytes, str]:
    """A small image (manifest, 256 KiB layer) and a separate 64 MiB blob; returns
    (manifest, layer, digest of the big blob)."""
    rng = random.Random(18)
    layer = rng.randbytes(256 * 1024)
    config = b'{"architecture":"amd64","os":"linux"}'
    big = rng.randbytes(BIG)
    for data in (layer, config, big):
        assert reg.upload_monolithic(image, sha256(data), data, len(data)).status == 201
    manifest = manifest_for(config, [layer])
    assert reg.put_manifest(image, "v1", manifest).status == 201
    return manifest, layer, sha256(big)


class SlowDownload(threading.Thread):
    """GETs a blob, reads its first MiB, then waits for `go` before reading the rest."""

    def __init__(self, reg: Registry, image: str, digest: str) -> None:
        super().__init__(daemon=True)
        self.reg, self.image, self.digest = reg, image, digest
        self.started_body = threading.Event()
        self.go = threading.Event()
        self.conn: http.client.HTTPConnection | None = None
        self.result: tuple[int, str, int] | None = None
        self.error: str | None = None

    def run(self) -> None:
        conn = self.conn = self.reg.connect()
        try:
            conn.request("GET", self.reg.path(self.image, f"blobs/{self.digest}"))
            resp = conn.getresponse()
            hasher = hashlib.sha256()
            total = 0
            chunk = resp.read(MiB)
            hasher.update(chunk)
            total += len(chunk)
            self.started_body.set()
            self.go.wait(300)
            while chunk := resp.read(MiB):
                hasher.update(chunk)
                total += len(chunk)
            self.result = (resp.status, f"sha256:{hasher.hexdigest()}", total)
        except (OSError, http.client.HTTPException) as exc:
            self.error = repr(exc)
        finally:
            conn.close()

    def local_port(self) -> int:
        assert self.conn is not None and self.conn.sock is not None
        return int(self.conn.sock.getsockname()[1])


def _socket_inodes(server_port: int, client_port: int) -> set[str]:
    """Inodes of the server side of the loopback connection from `client_port`."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            cols = line.split()
            local, remote = cols[1], cols[2]
            if (
                int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port
            ):
                inodes.add(cols[9])
    return inodes


def holder_of(pids: list[int], server_port: int, client_port: int) -> int | None:
    """Which of `pids` holds the server end of the connection from `client_port`."""
    inodes = {f"socket:[{i}]" for i in _socket_inodes(server_port, client_port)}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None


@dataclass
class PullStats:
    ok: int = 0
    errors: list[str] = field(default_factory=list)


def pull_loop(
    reg: Registry,
    image: str,
    manifest: bytes,
    layer: bytes,
    stop: threading.Event,
    stats: PullStats,
    *,
    keep_alive: bool,
) -> None:
    """Pull the manifest and the layer again and again: on a fresh connection per request, or
    on one kept-alive connection (reopened only when the server answered `Connection: close`)."""
    conn = reg.connect() if keep_alive else None
    paths = [
        (reg.path(image, "manifests/v1"), manifest),
        (reg.path(image, f"blobs/{sha256(layer)}"), layer),
    ]
    headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    while not stop.is_set():
        for path, expected in paths:
            c = conn if conn is not None else reg.connect()
            try:
                c.request("GET", path, headers=headers)
                resp = c.getresponse()
                body = resp.read()
                if resp.status != 200 or body != expected:
                    stats.errors.append(f"{path}: {resp.status} ({len(body)} bytes)")
                else:
                    stats.ok += 1
                if resp.will_close or conn is None:
                    c.close()  # http.client reopens on the next request
            except (OSError, http.client.HTTPException) as exc:
                stats.errors.append(f"{path}: {exc!r}")
                c.close()
    if conn is not None:
        conn.close()
