"""Raw-HTTP pushing and pulling for the durability, worker and memory tests.

Every request opens a new TCP connection unless told otherwise, so the requests of one upload
spread over the server's workers. Bodies may be iterables of bytes: they are streamed, never
joined.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

MiB = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Registry:
    """A v2 endpoint at `base` (e.g. `http://127.0.0.1:PORT/repository/docker-hosted`)."""

    def __init__(
        self, base: str, timeout: float = 60.0, headers: dict[str, str] | None = None
    ) -> None:
        parts = urlsplit(base)
        assert parts.hostname is not None and parts.port is not None
        self.host, self.port = parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.headers = headers or {}  # sent with every request (e.g. Authorization)

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def path(self, image: str, rest: str) -> str:
        return f"{self.prefix}/v2/{image}/{rest}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        *,
        sent: list[bool] | None = None,
    ) -> Reply:
        """One request on a fresh connection. `sent`, when given, gets `True` appended once the
        whole body went out (so a caller can tell "never fully sent" from "no answer")."""
        conn = self.connect()
        try:
            conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
            if sent is not None:
                sent.append(True)
            resp = conn.getresponse()
            data = resp.read()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def location_path(self, reply: Reply) -> str:
        location = reply.header("Location")
        assert location, f"no Location in {reply.status} {reply.headers}"
        parts = urlsplit(location)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    # -- blobs -------------------------------------------------------------------------
    def upload_monolithic(
        self,
        image: str,
        digest: str,
        body: bytes | Iterable[bytes],
        length: int,
        *,
        sent: list[bool] | None = None,
    ) -> Reply:
        return self.request(
            "POST",
            self.path(image, f"blobs/uploads/?digest={digest}"),
            body,
            {"Content-Length": str(length), "Content-Type": "application/octet-stream"},
            sent=sent,
        )

    def start_upload(self, image: str) -> str:
        reply = self.request("POST", self.path(image, "blobs/uploads/"), b"")
        assert reply.status == 202, (reply.status, reply.body[:300])
        return self.location_path(reply)

    def patch(
        self, location: str, offset: int, body: bytes | Iterable[bytes], length: int
    ) -> tuple[str, Reply]:
        reply = self.request(
            "PATCH",
            location,
            body,
            {
                "Content-Length": str(length),
                "Content-Range": f"{offset}-{offset + length - 1}",
                "Content-Type": "application/octet-stream",
            },
        )
        if reply.status != 202:
            return location, reply
        return self.location_path(reply), reply

    def finish_upload(self, location: str, digest: str, *, sent: list[bool] | None = None) -> Reply:
        sep = "&" if "?" in location else "?"
        return self.request(
            "PUT", f"{location}{sep}digest={digest}", b"", {"Content-Length": "0"}, sent=sent
        )

    def upload_chunked(self, image: str, chunks: list[bytes], digest: str) -> Reply:
        location = self.start_upload(image)
        offset = 0
        for chunk in chunks:
            location, reply = self.patch(location, offset, chunk, len(chunk))
            assert reply.status == 202, (reply.status, reply.body[:300])
            offset += len(chunk)
            assert reply.header("Range") == f"0-{offset - 1}", reply.headers
        return self.finish_upload(location, digest)

    def head_blob(self, image: str, digest: str) -> Reply:
        return self.request("HEAD", self.path(image, f"blobs/{digest}"))

    def pull_blob(self, image: str, digest: str, algorithm: str = "sha256") -> tuple[int, str, int]:
        """GET a blob streaming; returns (status, hex digest of the body, body length)."""
        conn = self.connect()
        try:
            conn.request("GET", self.path(image, f"blobs/{digest}"), headers=self.headers)
            resp = conn.getresponse()
            hasher = hashlib.new(algorithm)
            total = 0
            while chunk := resp.read(MiB):
                hasher.update(chunk)
                total += len(chunk)
            return resp.status, hasher.hexdigest(), total
        finally:
            conn.close()

    # -- manifests ---------------------------------------------------------------------
    def put_manifest(
        self, image: str, reference: str, body: bytes, *, sent: list[bool] | None = None
    ) -> Reply:
        return self.request(
            "PUT",
            self.path(image, f"manifests/{reference}"),
            body,
            {"Content-Type": OCI_MANIFEST, "Content-Length": str(len(body))},
            sent=sent,
        )

    def get_manifest(self, image: str, reference: str) -> Reply:
        return self.request(
            "GET", self.path(image, f"manifests/{reference}"), headers={"Accept": OCI_MANIFEST}
        )


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def random_blob(rng: random.Random, low: int, high: int) -> bytes:
    return rng.randbytes(rng.randint(low, high))


def manifest_for(
    config: bytes, layers: list[bytes], annotations: dict[str, str] | None = None
) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}
            for layer in layers
        ],
    }
    if annotations:
        doc["annotations"] = annotations
    return json.dumps(doc, sort_keys=True).encode()


def push_config_only(
    reg: Registry, image: str, tag: str, annotations: dict[str, str] | None = None
) -> bytes:
    """An image of a config blob and no layer pushed as `image:tag`; returns its manifest."""
    config = b'{"architecture":"amd64","os":"linux"}'
    blob = reg.upload_monolithic(image, sha256(config), config, len(config))
    assert blob.status == 201, (blob.status, blob.body[:300])
    manifest = manifest_for(config, [], annotations)
    reply = reg.put_manifest(image, tag, manifest)
    assert reply.status == 201, (reply.status, reply.body[:300])
    return manifest


# -- big deterministic blobs ---------------------------------------------------------------
class BigBlob:
    """`size` bytes made of 1 MiB blocks: one random block, each copy stamped with its index,
    so no two blocks are equal and nothing but the current block is ever in memory."""

    def __init__(self, size: int, seed: int = 0, block: int = MiB) -> None:
        self.size = size
        self.block = block
        self._base = random.Random(seed).randbytes(block)

    def chunks(self, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Bytes [start, start+length) of the blob; `start` must be block-aligned."""
        assert start % self.block == 0
        end = self.size if length is None else start + length
        index = start // self.block
        pos = start
        while pos < end:
            data = index.to_bytes(8, "big") + self._base[8:]
            take = min(len(data), end - pos)
            yield data if take == len(data) else data[:take]
            pos += take
            index += 1

    def digest(self, algorithm: str = "sha256") -> str:
        hasher = hashlib.new(algorithm)
        for chunk in self.chunks():
            hasher.update(chunk)
        return f"{algorithm}:{hasher.hexdigest()}"


class Hashing:
    """Wraps an iterable of chunks, hashing what passes through."""

    def __init__(self, chunks: Iterable[bytes], hasher: hashlib._Hash) -> None:
        self.chunks = chunks
        self.hasher = hasher
        self.count = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.hasher.update(chunk)
            self.count += len(chunk)
            yield chunk


# -- processes -----------------------------------------------------------------------------
def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields[0], int(fields[1]), int(fields[2])


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None and st[1] == pid and st[0] != "Z":
                out.append(int(entry))
    return sorted(out)


def group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None and st[2] == pgid and st[0] != "Z":
                out.append(int(entry))
    return sorted(out)


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class RssSampler:
    """Samples VmRSS of `pids` every `interval` seconds in a thread; `peak[pid]` is the max."""

    pids: list[int]
    interval: float = 0.1
    peak: dict[int, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                rss = rss_bytes(pid)
                if rss is not None and rss > self.peak.get(pid, 0):
                    self.peak[pid] = rss
            self.samples += 1
            time.sleep(self.interval)

    def max(self) -> int:
        return max(self.peak.values(), default=0)
