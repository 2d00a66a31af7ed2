"""Helpers for the security tests: a tiny registry client doing the Docker bearer dance, small
images pushed over raw HTTP, and `portway user|role ...` against a test server's config."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from .server import PortwayServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
_PARAM_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` -> ("bearer", {realm, service, ...})."""
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), {k: v.replace('\\"', '"') for k, v in _PARAM_RE.findall(rest)}


def cli(server: PortwayServer, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`portway ARGS --config <server's config>`."""
    argv = [sys.executable, "-m", "portway", *args, "--config", str(server.config_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed: {result.stdout}{result.stderr}")
    return result


@dataclass
class Client:
    """A registry client for one access method.

    `base` is the URL actually connected to (`http://127.0.0.1:PORT`); `host`, when given, is
    sent as the Host header (a host mapping); `prefix` is the path before `/v2` (the Nexus
    layout). On a 401 Bearer challenge the client asks the realm for a token (Basic with
    `user`/`password`, or nothing) and retries once; the realm must name the host the client
    addressed (it is the client-visible URL).
    """

    base: str
    host: str | None = None
    prefix: str = ""
    user: str | None = None
    password: str | None = None
    token: str | None = None
    fixed_token: bool = False  # never fetch a new token (replay tests)
    basic: tuple[str, str] | None = None  # send Basic on every request instead (seeding)
    realms: list[str] = field(default_factory=list)
    token_answers: list[requests.Response] = field(default_factory=list)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.host:
            headers["Host"] = self.host
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.basic:
            headers["Authorization"] = basic(*self.basic)
        return headers

    def visible_host(self) -> str:
        return self.host or urlsplit(self.base).netloc

    def url(self, path: str) -> str:
        return f"{self.base}{self.prefix}{path}"

    def raw(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = self._headers(kwargs.pop("headers", None))
        return requests.request(
            method, self.url(path), headers=headers, timeout=30, allow_redirects=False, **kwargs
        )

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A request with the bearer dance: a 401 Bearer challenge -> token -> one retry."""
        headers = kwargs.pop("headers", None)
        answer = self.raw(method, path, headers=headers, **kwargs)
        if answer.status_code != 401 or self.fixed_token:
            return answer
        scheme, params = parse_challenge(answer.headers.get("WWW-Authenticate", ""))
        if scheme != "bearer" or "realm" not in params:
            return answer
        token = self.fetch_token(params)
        if token is None:
            return answer
        self.token = token
        return self.raw(method, path, headers=headers, **kwargs)

    def fetch_token(self, params: dict[str, str], **extra: str) -> str | None:
        realm = params["realm"]
        self.realms.append(realm)
        parts = urlsplit(realm)
        assert parts.netloc == self.visible_host(), (realm, self.visible_host())
        target = urlunsplit(("http", urlsplit(self.base).netloc, parts.path, parts.query, ""))
        query: dict[str, Any] = {"service": params.get("service", "")}
        if params.get("scope"):
            query["scope"] = params["scope"].split(" ")
        query.update(extra)
        auth = (self.user, self.password) if self.user is not None else None
        headers = {"Host": self.host} if self.host else {}
        answer = requests.get(
            target, params=query, auth=auth, headers=headers, timeout=30, allow_redirects=False
        )
        self.token_answers.append(answer)
        if answer.status_code != 200:
            return None
        token = answer.json().get("token")
        return str(token) if token else None

    def login(self) -> requests.Response:
        """`docker login`: GET /v2/, then the token endpoint with no scope."""
        self.token = None
        return self.request("GET", "/v2/")

    # -- registry operations (names as this route addresses them) -----------------------

    def push_blob(self, name: str, data: bytes) -> requests.Response:
        return self.request(
            "POST",
            f"/v2/{name}/blobs/uploads/",
            params={"digest": digest_of(data)},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    def put_manifest(self, name: str, ref: str, body: bytes) -> requests.Response:
        return self.request(
            "PUT",
            f"/v2/{name}/manifests/{ref}",
            data=body,
            headers={"Content-Type": OCI_MANIFEST},
        )

    def get_manifest(self, name: str, ref: str) -> requests.Response:
        return self.request("GET", f"/v2/{name}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})


@dataclass(frozen=True)
class Image:
    config: bytes
    layer: bytes
    manifest: bytes

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)


def make_image(seed: str, note: str = "") -> Image:
    """A tiny single-layer OCI image; `note` changes only the manifest (an overwrite)."""
    layer = f"layer for {seed}\n".encode() * 8
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        | {"config": {"Labels": {"seed": seed}}}
    ).encode()
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}],
    }
    if note:
        manifest["annotations"] = {"note": note}
    return Image(config, layer, json.dumps(manifest, sort_keys=True).encode())


def admin_client(server: PortwayServer, prefix: str = "") -> Client:
    """`admin` (the first start's password) with Basic on every request, for seeding; `prefix`
    as for `Client` (`/repository/<name>` for the Nexus layout)."""
    return Client(server.url, prefix=prefix, basic=("admin", server.admin_password() or ""))


def push_image(client: Client, name: str, tag: str, image: Image) -> requests.Response:
    """Blobs then the manifest; returns the manifest PUT answer (or the first refusal)."""
    for blob in (image.config, image.layer):
        answer = client.push_blob(name, blob)
        if answer.status_code != 201:
            return answer
    return client.put_manifest(name, tag, image.manifest)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
