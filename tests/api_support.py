"""Helpers for the v2 protocol tests (tests/test_api_*.py): a thin `requests` client that
speaks the registry API of one repository, content builders and raw-socket requests."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from support.server import DEFAULT_REPOSITORY, PortwayServer

API_VERSION = "registry/2.0"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
EMPTY_JSON = b"{}"

_counter = itertools.count()


def unique(prefix: str) -> str:
    """A fresh image name per call, so tests sharing one server never collide."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


def start_server(
    tmp_path_factory: pytest.TempPathFactory, name: str, **kwargs: Any
) -> PortwayServer:
    return PortwayServer(tmp_path_factory.mktemp(name), **kwargs).start()


@contextlib.contextmanager
def running_server(
    tmp_path_factory: pytest.TempPathFactory, name: str, **kwargs: Any
) -> Iterator[PortwayServer]:
    """For module-scoped fixtures: one server shared by a whole test module."""
    server = start_server(tmp_path_factory, name, **kwargs)
    try:
        yield server
    finally:
        server.stop()
        print(f"\n----- portway log ({name}) -----\n" + "\n".join(server.log().splitlines()[-60:]))


def errors(response: requests.Response) -> list[str]:
    """The OCI error codes of a response body."""
    doc = response.json()
    assert isinstance(doc, dict) and isinstance(doc.get("errors"), list), response.text
    return [e["code"] for e in doc["errors"]]


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:400])
    assert code in errors(response), response.text[:400]
    assert response.headers.get("Docker-Distribution-API-Version") == API_VERSION


def blob_files(server: PortwayServer) -> list[Path]:
    """Every published blob file on disk."""
    root = server.data_dir / "storage" / "blobs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def upload_files(server: PortwayServer) -> list[Path]:
    root = server.data_dir / "storage" / "uploads"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


class Api:
    """The v2 API of one repository, by the Nexus path layout (`/repository/<repo>/v2`) or
    by repository path (`/v2/<repo>/<image>`)."""

    def __init__(
        self, server: PortwayServer, repository: str = DEFAULT_REPOSITORY, layout: str = "nexus"
    ) -> None:
        self.server = server
        self.repository = repository
        self.layout = layout
        if layout == "nexus":
            self.prefix = f"/repository/{repository}"
            self.name_prefix = ""
        elif layout == "path":
            self.prefix = ""
            self.name_prefix = f"{repository}/"
        else:
            raise ValueError(layout)
        self.http = requests.Session()

    # -- addresses -----------------------------------------------------------------------
    def path(self, image: str, rest: str) -> str:
        """Client-visible path of `/v2/<name>/<rest>`."""
        return f"{self.prefix}/v2/{self.name_prefix}{image}/{rest}"

    def url(self, image: str, rest: str) -> str:
        return self.server.url + self.path(image, rest)

    def absolute(self, location: str) -> str:
        return location if location.startswith("http") else self.server.url + location

    def base_url(self) -> str:
        return f"{self.server.url}{self.prefix}/v2/"

    # -- raw verbs -----------------------------------------------------------------------
    def request(self, method: str, image: str, rest: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("allow_redirects", False)
        return self.http.request(method, self.url(image, rest), **kwargs)

    def get(self, image: str, rest: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", image, rest, **kwargs)

    def head(self, image: str, rest: str, **kwargs: Any) -> requests.Response:
        return self.request("HEAD", image, rest, **kwargs)

    # -- blobs ---------------------------------------------------------------------------
    def push_blob(self, image: str, data: bytes, digest: str | None = None) -> str:
        """Monolithic POST ?digest=; returns the digest."""
        digest = digest or sha256(data)
        r = self.request(
            "POST",
            image,
            "blobs/uploads/",
            params={"digest": digest},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, (r.status_code, r.text)
        return digest

    def start_upload(self, image: str) -> requests.Response:
        r = self.request("POST", image, "blobs/uploads/")
        assert r.status_code == 202, (r.status_code, r.text)
        return r

    def blob_status(self, image: str, digest: str) -> int:
        return self.head(image, f"blobs/{digest}").status_code

    # -- manifests -----------------------------------------------------------------------
    def put_manifest(
        self,
        image: str,
        reference: str,
        body: bytes | dict[str, Any],
        media_type: str | None = OCI_MANIFEST,
        **kwargs: Any,
    ) -> requests.Response:
        data = body if isinstance(body, bytes) else canonical(body)
        headers = dict(kwargs.pop("headers", {}))
        if media_type is not None:
            headers["Content-Type"] = media_type
        return self.request(
            "PUT", image, f"manifests/{reference}", data=data, headers=headers, **kwargs
        )

    def push_image(
        self,
        image: str,
        tag: str | None = "latest",
        *,
        media_type: str = OCI_MANIFEST,
        layers: int = 1,
        extra: dict[str, Any] | None = None,
    ) -> tuple[str, bytes]:
        """Push config + layers + manifest; returns (manifest digest, manifest bytes)."""
        docker = media_type == DOCKER_MANIFEST
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": unique("c")}).encode()
        config_desc = descriptor(
            DOCKER_CONFIG if docker else OCI_CONFIG, config, self.push_blob(image, config)
        )
        layer_descs = []
        for _ in range(layers):
            data = random_bytes(2048)
            layer_descs.append(
                descriptor(DOCKER_LAYER if docker else OCI_LAYER, data, self.push_blob(image, data))
            )
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config_desc,
            "layers": layer_descs,
            **(extra or {}),
        }
        body = canonical(doc)
        digest = sha256(body)
        r = self.put_manifest(image, tag or digest, body, media_type)
        assert r.status_code == 201, (r.status_code, r.text)
        return digest, body


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def descriptor(media_type: str, data: bytes, digest: str | None = None) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest or sha256(data), "size": len(data)}


# -- raw sockets ---------------------------------------------------------------------------
def raw_exchange(
    server: PortwayServer,
    head: str,
    body: bytes = b"",
    *,
    read_reply: bool = True,
    half_close: bool = True,
    timeout: float = 10.0,
) -> bytes:
    """Send a request head (request line + headers, no blank line) and `body`, then half-close
    and read what comes back (possibly nothing: the server may just drop the connection)."""
    host, port = server.host.split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.rstrip("\r\n").encode() + b"\r\n\r\n" + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        if not read_reply:
            return b""
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def raw_status(reply: bytes) -> int | None:
    if not reply.startswith(b"HTTP/1."):
        return None
    return int(reply.split(b" ", 2)[1])
