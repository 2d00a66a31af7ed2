"""Test-only helpers for the upstream client: a token service distribution trusts, a storage
server for redirected blob GETs, a fault server for what a real registry will not do on demand,
and a raw-HTTP pusher that fills a registry with content.

The aiohttp servers run on an event loop in a background thread, so synchronous pytest
fixtures can start them once and each test can drive its own loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jwt
import requests
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.ports import free_port

T = TypeVar("T")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- a background event loop for test servers ---------------------------------------------


class BackgroundLoop:
    """An asyncio loop in a daemon thread; ``run(coro)`` executes there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class AppServer:
    """An aiohttp application listening on 127.0.0.1:<free port> inside a ``BackgroundLoop``."""

    def __init__(self, loop: BackgroundLoop, app: web.Application, port: int | None = None):
        self._loop = loop
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    def start(self) -> AppServer:
        async def go() -> None:
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._loop.run(go())
        return self

    def stop(self) -> None:
        if self._runner is not None:
            self._loop.run(self._runner.cleanup())
            self._runner = None


# -- a token service distribution trusts ------------------------------------------------------


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key ID distribution 2.8 (through libtrust) derives from a public key: SHA-256 of
    the DER SubjectPublicKeyInfo, first 240 bits, base32 without padding, in groups of four
    characters joined by colons."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


@dataclass
class TokenRequest:
    scopes: list[str]
    account: str | None
    authorized: bool


@dataclass
class TokenService:
    """Issues registry JWTs signed by a fresh EC key whose self-signed certificate is the
    registry's ``rootcertbundle``.

    ``key_header`` picks how the token names its key: ``kid`` (the libtrust fingerprint,
    looked up among the bundle's keys) or ``x5c`` (the certificate itself, verified against
    the bundle). ``users`` maps names to passwords; ``allow_anonymous`` grants pull without
    credentials. Every request is recorded in ``requests``.
    """

    directory: Path
    users: dict[str, str] = field(default_factory=dict)
    allow_anonymous: bool = False
    expires_in: int | None = 300
    key_header: str = "kid"
    service: str = "portway-test-registry"
    issuer: str = "portway-test-issuer"
    requests: list[TokenRequest] = field(default_factory=list)
    deny: set[str] = field(default_factory=set)  # repository names granted nothing
    expired_next: int = 0  # hand out this many tokens already expired (still claiming 300 s)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portway test token signer")])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.bundle_path = self.directory / "token-signer.crt"
        self.bundle_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        self.key_id = libtrust_key_id(self._key.public_key())
        app = web.Application()
        app.router.add_get("/token", self._handle)
        self.app = app
        self.server: AppServer | None = None

    @property
    def realm(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/token"

    def start(self, loop: BackgroundLoop) -> TokenService:
        self.server = AppServer(loop, self.app).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def registry_config(self) -> dict[str, Any]:
        """The ``auth`` section for distribution's configuration."""
        return {
            "auth": {
                "token": {
                    "realm": self.realm,
                    "service": self.service,
                    "issuer": self.issuer,
                    "rootcertbundle": str(self.bundle_path),
                }
            }
        }

    def hits(self, scope: str | None = None) -> int:
        return sum(1 for r in self.requests if scope is None or scope in r.scopes)

    def issue(self, account: str | None, scopes: list[str], lifetime: int | None = None) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and name and name not in self.deny:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": account or "",
            "aud": self.service,
            "exp": now + (lifetime if lifetime is not None else self.expires_in or 60),
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        if self.key_header == "x5c":
            der = self.certificate.public_bytes(serialization.Encoding.DER)
            headers: dict[str, Any] = {"x5c": [base64.b64encode(der).decode()]}
        else:
            headers = {"kid": self.key_id}
        return jwt.encode(claims, self._key, algorithm="ES256", headers=headers)

    async def _handle(self, request: web.Request) -> web.Response:
        scopes = request.query.getall("scope", [])
        account: str | None = None
        authorized = False
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(user) != password:
                self.requests.append(TokenRequest(scopes, user, False))
                return web.json_response({"details": "wrong credentials"}, status=401)
            account, authorized = user, True
        elif not self.allow_anonymous:
            self.requests.append(TokenRequest(scopes, None, False))
            return web.json_response(
                {"details": "login required"},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="token"'},
            )
        self.requests.append(TokenRequest(scopes, account, authorized))
        if not authorized:  # anonymous: pull only
            scopes = [s.replace(",push", "").replace("push,", "") for s in scopes]
        lifetime = None
        if self.expired_next > 0:
            self.expired_next -= 1
            lifetime = -300  # beyond distribution's 60 s leeway
        body: dict[str, Any] = {"token": self.issue(account, scopes, lifetime)}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return web.json_response(body)


# -- a storage server blob redirects point at -------------------------------------------------


class StorageServer:
    """Serves distribution's filesystem storage root, as a CDN or S3 would behind the
    ``redirect`` storage middleware; records the headers of every request."""

    def __init__(self, loop: BackgroundLoop, root: Path) -> None:
        self.root = root
        self.seen: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        self.server = AppServer(loop, app)
        self.url = self.server.url

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        path = (self.root / request.match_info["path"]).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            return web.Response(status=404)
        return web.FileResponse(path)


# -- a fault server ---------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FaultServer:
    """A fake upstream for failures a real registry cannot produce on demand. ``route(path,
    handler)`` sets what ``GET|HEAD path`` does; ``/v2/`` answers 200 by default."""

    def __init__(self, loop: BackgroundLoop) -> None:
        self.routes: dict[str, Handler] = {}
        self.hits: list[str] = []
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        self.server = AppServer(loop, app)
        self.url = self.server.url

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        handler = self.routes.get(request.path)
        if handler is not None:
            return await handler(request)
        if request.path == "/v2/":
            return web.json_response({})
        return web.json_response(
            {"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known"}]},
            status=404,
        )


def fixed(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return handler


def truncated(full_size: int, send: bytes) -> Handler:
    """Announce ``full_size`` bytes, send ``send``, then drop the connection."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "application/octet-stream"}
        )
        response.content_length = full_size
        await response.prepare(request)
        await response.write(send)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return response

    return handler


def stalled(full_size: int, send: bytes, stall: float) -> Handler:
    """Announce ``full_size`` bytes, send ``send``, then go silent for ``stall`` seconds."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_length = full_size
        await response.prepare(request)
        await response.write(send)
        await asyncio.sleep(stall)
        return response

    return handler


def slow(delay: float) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        return web.Response(status=200, body=b"{}")

    return handler


# -- pushing test content with raw HTTP -------------------------------------------------------


@dataclass
class PushedImage:
    name: str
    tag: str
    manifest: bytes
    media_type: str
    digest: str
    blobs: dict[str, bytes]  # digest -> content (config and layers)

    @property
    def layers(self) -> list[str]:
        return [layer["digest"] for layer in json.loads(self.manifest)["layers"]]


class Pusher:
    """Monolithic blob uploads (POST then PUT with the whole body) and manifest PUTs."""

    def __init__(self, base_url: str, auth: Callable[[str], dict[str, str]] | None = None):
        self.base_url = base_url.rstrip("/")
        self._auth = auth or (lambda scope: {})

    def _headers(self, name: str) -> dict[str, str]:
        return self._auth(f"repository:{name}:pull,push")

    def push_blob(self, name: str, data: bytes) -> str:
        digest = sha256(data)
        headers = self._headers(name)
        post = requests.post(
            f"{self.base_url}/v2/{name}/blobs/uploads/", headers=headers, timeout=30
        )
        assert post.status_code == 202, (post.status_code, post.text)
        location = requests.compat.urljoin(self.base_url + "/", post.headers["Location"])
        sep = "&" if "?" in location else "?"
        put = requests.put(
            f"{location}{sep}digest={digest}",
            data=data,
            headers={**headers, "Content-Type": "application/octet-stream"},
            timeout=60,
        )
        assert put.status_code == 201, (put.status_code, put.text)
        return digest

    def push_manifest(self, name: str, reference: str, body: bytes, media_type: str) -> str:
        put = requests.put(
            f"{self.base_url}/v2/{name}/manifests/{reference}",
            data=body,
            headers={**self._headers(name), "Content-Type": media_type},
            timeout=30,
        )
        assert put.status_code == 201, (put.status_code, put.text)
        digest = put.headers["Docker-Content-Digest"]
        assert digest == sha256(body)
        return digest

    def push_image(
        self,
        name: str,
        tag: str,
        layer_sizes: tuple[int, ...] = (4096,),
        seed: int = 0,
        docker: bool = False,
    ) -> PushedImage:
        blobs: dict[str, bytes] = {}
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}, "seed": seed},
            sort_keys=True,
        ).encode()
        blobs[self.push_blob(name, config)] = config
        layers = []
        for index, size in enumerate(layer_sizes):
            data = _pseudo_random(size, f"{name}:{tag}:{seed}:{index}")
            digest = self.push_blob(name, data)
            blobs[digest] = data
            layers.append(
                {"mediaType": DOCKER_LAYER if docker else OCI_LAYER, "digest": digest, "size": size}
            )
        media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": {
                    "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                    "digest": sha256(config),
                    "size": len(config),
                },
                "layers": layers,
            },
            indent=2,
        ).encode()
        digest = self.push_manifest(name, tag, manifest, media_type)
        return PushedImage(name, tag, manifest, media_type, digest, blobs)


def _pseudo_random(size: int, seed: str) -> bytes:
    out = bytearray()
    counter = 0
    base = seed.encode()
    while len(out) < size:
        out += hashlib.sha512(base + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def basic_auth(user: str, password: str) -> Callable[[str], dict[str, str]]:
    value = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return lambda scope: {"Authorization": value}


def bearer_auth(service: TokenService, user: str) -> Callable[[str], dict[str, str]]:
    """Headers for the pusher in token mode, minted directly (not counted as requests)."""
    return lambda scope: {"Authorization": f"Bearer {service.issue(user, [scope])}"}


def big_random(size: int) -> bytes:
    return os.urandom(size)
