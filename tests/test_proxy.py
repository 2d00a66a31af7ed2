"""Proxy repositories against real upstreams: CNCF distribution (anonymous, htpasswd, token
mode) and another Portway; a fault server only for what a real registry will not do on demand
(pausing mid-body, 429, 503, corrupted bodies)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
from aiohttp import web

from conftest import PortwayFactory
from proxy_support import (
    Relay,
    blob_gets,
    blob_heads,
    blob_is_cached,
    cached_soon,
    get_blob,
    get_manifest,
    group,
    hosted,
    manifest_requests,
    oci_error,
    proxy,
    v2,
    wait_for,
)
from support.distribution import Distribution
from support.dockerd import Dockerd
from support.engines import ContainerStorage, skopeo
from support.images import MultiArchImage, OciImage
from support.server import PortwayServer
from upstream_support import (
    BackgroundLoop,
    FaultServer,
    Pusher,
    TokenService,
    fixed,
    sha256,
)

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")


@dataclass
class Upstream:
    registry: Distribution
    image: OciImage  # team/app:v1
    multiarch: MultiArchImage  # team/multi:multi
    token: TokenService | None = None

    @property
    def url(self) -> str:
        return self.registry.url


def _seed(registry: Distribution, image: OciImage, multi: MultiArchImage, creds: str = "") -> None:
    auth = ("--dest-creds", creds) if creds else ()
    skopeo("copy", "--quiet", *NO_TLS, *auth, image.ref, f"docker://{registry.host}/team/app:v1")
    skopeo(
        "copy",
        "--quiet",
        "--all",
        *NO_TLS,
        *auth,
        multi.ref,
        f"docker://{registry.host}/team/multi:multi",
    )


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def anonymous(
    tmp_path_factory: pytest.TempPathFactory, oci_image: OciImage, multiarch_image: MultiArchImage
) -> Iterator[Upstream]:
    registry = Distribution(tmp_path_factory.mktemp("anon")).start()
    _seed(registry, oci_image, multiarch_image)
    yield Upstream(registry, oci_image, multiarch_image)
    registry.stop()


@pytest.fixture
def faults(loop_thread: BackgroundLoop) -> Iterator[FaultServer]:
    server = FaultServer(loop_thread)
    server.server.start()
    yield server
    server.server.stop()


def pull(server: PortwayServer, repository: str, ref: str, dest: Path, *extra: str) -> float:
    """skopeo copy from Portway into an OCI layout; returns the seconds it took."""
    started = time.perf_counter()
    skopeo(
        "copy",
        "--quiet",
        *NO_TLS,
        *extra,
        f"docker://{server.image(ref, repository)}",
        f"oci:{dest}:pulled",
    )
    return time.perf_counter() - started


def pulled_manifest_digest(dest: Path) -> str:
    index = json.loads((dest / "index.json").read_text())
    digest: str = index["manifests"][-1]["digest"]
    return digest


# -- cold and warm pulls ----------------------------------------------------------------------


def test_cold_then_warm_pull_with_skopeo(
    anonymous: Upstream, portway_factory: PortwayFactory, tmp_path: Path
) -> None:
    server = portway_factory(repositories=[proxy("hub", anonymous.url)])
    cold = pull(server, "hub", "team/app:v1", tmp_path / "cold")
    assert pulled_manifest_digest(tmp_path / "cold") == anonymous.image.manifest_digest
    for layer in anonymous.image.layers:
        assert cached_soon(server, layer.digest)
    gets_after_cold = blob_gets(anonymous.registry.access_log(), anonymous.image.layers[0].digest)
    warm = pull(server, "hub", "team/app:v1", tmp_path / "warm")
    assert pulled_manifest_digest(tmp_path / "warm") == anonymous.image.manifest_digest
    # a warm pull asks the upstream for no blob
    log = anonymous.registry.access_log()
    assert blob_gets(log, anonymous.image.layers[0].digest) == gets_after_cold == 1
    print(f"\nskopeo pull through proxy: cold {cold:.2f} s, warm {warm:.2f} s")


def test_pull_by_digest_and_multiarch_index(
    anonymous: Upstream, portway_factory: PortwayFactory, tmp_path: Path
) -> None:
    server = portway_factory(repositories=[proxy("hub", anonymous.url)])
    by_digest = f"team/app@{anonymous.image.manifest_digest}"
    skopeo(
        "copy",
        "--quiet",
        *NO_TLS,
        f"docker://{server.image(by_digest, 'hub')}",
        f"oci:{tmp_path / 'd'}:x",
    )
    assert pulled_manifest_digest(tmp_path / "d") == anonymous.image.manifest_digest

    multi = anonymous.multiarch
    pull(server, "hub", "team/multi:multi", tmp_path / "all", "--all")
    assert pulled_manifest_digest(tmp_path / "all") == multi.index_digest
    for image in multi.images:
        for layer in image.layers:
            assert cached_soon(server, layer.digest)
    # the index is answered by digest as well, from the cache now
    resp = get_manifest(server, "hub", "team/multi", multi.index_digest)
    assert resp.status_code == 200 and resp.headers["Docker-Content-Digest"] == multi.index_digest
    assert "image.index" in resp.headers["Content-Type"]


def test_basic_credentials_upstream(
    tmp_path: Path,
    portway_factory: PortwayFactory,
    oci_image: OciImage,
    multiarch_image: MultiArchImage,
) -> None:
    registry = Distribution(tmp_path / "htpasswd", htpasswd=("alice", "s3cret")).start()
    try:
        _seed(registry, oci_image, multiarch_image, creds="alice:s3cret")
        server = portway_factory(
            repositories=[
                proxy("good", registry.url, remote_username="alice", remote_password="s3cret"),
                proxy("bad", registry.url, remote_username="alice", remote_password="wrong"),
            ]
        )
        pull(server, "good", "team/app:v1", tmp_path / "good")
        assert pulled_manifest_digest(tmp_path / "good") == oci_image.manifest_digest
        resp = get_manifest(server, "bad", "team/app", "v1")
        assert resp.status_code == 404, resp.text
        code, message = oci_error(resp)
        assert code == "MANIFEST_UNKNOWN" and "refused our credentials" in message
    finally:
        registry.stop()


def test_token_mode_upstream(
    tmp_path: Path,
    portway_factory: PortwayFactory,
    loop_thread: BackgroundLoop,
    oci_image: OciImage,
) -> None:
    service = TokenService(tmp_path / "token", users={"bob": "hunter2"}).start(loop_thread)
    registry = Distribution(tmp_path / "registry", extra_config=service.registry_config())
    registry.start()
    try:
        token = service.issue("bob", ["repository:team/app:pull,push"], lifetime=600)
        skopeo(
            "copy",
            "--quiet",
            *NO_TLS,
            "--dest-registry-token",
            token,
            oci_image.ref,
            f"docker://{registry.host}/team/app:v1",
        )
        server = portway_factory(
            repositories=[
                proxy("tok", registry.url, remote_username="bob", remote_password="hunter2")
            ]
        )
        pull(server, "tok", "team/app:v1", tmp_path / "a")
        assert pulled_manifest_digest(tmp_path / "a") == oci_image.manifest_digest
        # one token per scope, reused for the manifest and every blob
        assert service.hits("repository:team/app:pull") == 1
        assert all(r.account == "bob" for r in service.requests)
    finally:
        registry.stop()
        service.stop()


def test_portway_as_upstream_with_podman(
    portway_factory: PortwayFactory,
    container_storage: ContainerStorage,
    oci_image: OciImage,
) -> None:
    origin = portway_factory()  # the default hosted repository `docker-hosted`
    skopeo("copy", "--quiet", *NO_TLS, oci_image.ref, f"docker://{origin.image('team/app:v1')}")
    server = portway_factory(repositories=[proxy("mirror", origin.repository_url("docker-hosted"))])
    ref = server.image("team/app:v1", "mirror")
    container_storage.podman("pull", "--tls-verify=false", "-q", ref)
    out = container_storage.podman("image", "inspect", "--format", "{{.Id}}", ref)
    assert out.stdout.strip() == oci_image.config_digest.removeprefix("sha256:")
    # warm: served from the cache even with the origin gone
    origin.stop()
    container_storage.podman("rmi", "-f", ref)
    container_storage.podman("pull", "--tls-verify=false", "-q", ref)


def test_secured_portway_upstream_with_token_dance(
    portway_factory: PortwayFactory, oci_image: OciImage, tmp_path: Path
) -> None:
    origin = portway_factory(security={"enabled": True})
    password = origin.admin_password()
    assert password
    skopeo(
        "copy",
        "--quiet",
        *NO_TLS,
        "--dest-creds",
        f"admin:{password}",
        oci_image.ref,
        f"docker://{origin.image('team/app:v1')}",
    )
    url = origin.repository_url("docker-hosted")
    server = portway_factory(
        repositories=[
            proxy("mirror", url, remote_username="admin", remote_password=password),
            proxy("anon", url),
        ]
    )
    pull(server, "mirror", "team/app:v1", tmp_path / "a")
    assert pulled_manifest_digest(tmp_path / "a") == oci_image.manifest_digest
    refused = get_manifest(server, "anon", "team/app", "v1")
    assert refused.status_code == 404, refused.text
    assert "credentials" in oci_error(refused)[1] or "401" in oci_error(refused)[1]


def test_docker_pull_through_proxy(
    anonymous: Upstream, portway_factory: PortwayFactory, dockerd: Dockerd
) -> None:
    server = portway_factory(repositories=[proxy("hub", anonymous.url)])
    ref = server.image("team/app:v1", "hub")
    dockerd.docker("pull", "-q", ref)
    out = dockerd.docker("image", "inspect", "--format", "{{.Id}}", ref)
    assert out.stdout.strip() == anonymous.image.config_digest
    dockerd.docker("rmi", ref)


# -- single flight, stream while caching ------------------------------------------------------

BIG = 50 * 1024 * 1024


@pytest.mark.parametrize("workers", [1, 2])
def test_twenty_concurrent_cold_pulls_make_one_upstream_get(
    anonymous: Upstream, portway_factory: PortwayFactory, workers: int
) -> None:
    """With 2 workers the clients' connections spread over both processes: the one that
    does not fetch mirrors the other's download (and its clients still stream)."""
    data = os.urandom(BIG)
    digest = Pusher(anonymous.url).push_blob(f"team/big{workers}", data)
    server = portway_factory(repositories=[proxy("hub", anonymous.url)], workers=workers)
    url = v2(server, "hub", f"team/big{workers}/blobs/{digest}")
    barrier = threading.Barrier(20)

    def one(_: int) -> tuple[int, str]:
        barrier.wait()
        with requests.get(url, stream=True, timeout=120) as resp:
            hasher = hashlib.sha256()
            for chunk in resp.iter_content(1 << 20):
                hasher.update(chunk)
            return resp.status_code, "sha256:" + hasher.hexdigest()

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert results == [(200, digest)] * 20
    assert blob_gets(anonymous.registry.access_log(), digest) == 1
    wait_for(lambda: blob_is_cached(server, digest), what="the blob in the cache")
    assert get_blob(server, "hub", f"team/big{workers}", digest).content == data
    assert blob_gets(anonymous.registry.access_log(), digest) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_head_of_a_cold_blob_is_an_upstream_head_not_a_download(
    anonymous: Upstream, portway_factory: PortwayFactory, workers: int
) -> None:
    """Twenty concurrent HEADs (spread over the workers) make one upstream HEAD and no GET;
    only a GET downloads, once; afterwards the cache answers HEAD."""
    data = os.urandom(8 * 1024 * 1024)
    name = f"team/head{workers}"
    digest = Pusher(anonymous.url).push_blob(name, data)
    server = portway_factory(repositories=[proxy("hub", anonymous.url)], workers=workers)
    url = v2(server, "hub", f"{name}/blobs/{digest}")
    barrier = threading.Barrier(20)

    def head(_: int) -> tuple[int, str | None, str | None]:
        barrier.wait()
        resp = requests.head(url, timeout=60)
        return (
            resp.status_code,
            resp.headers.get("Content-Length"),
            resp.headers.get("Docker-Content-Digest"),
        )

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(head, range(20)))
    assert results == [(200, str(len(data)), digest)] * 20

    def counts() -> tuple[int, int]:
        log = anonymous.registry.access_log()  # a line is written once its answer is sent
        return blob_heads(log, digest), blob_gets(log, digest)

    wait_for(lambda: counts()[0] > 0, timeout=10, what="the upstream HEAD in its log")
    time.sleep(1.0)  # room for a download, had one started, to show up
    assert counts() == (1, 0)
    assert not blob_is_cached(server, digest)

    assert get_blob(server, "hub", name, digest).content == data
    wait_for(lambda: blob_is_cached(server, digest), what="the blob in the cache")
    assert requests.head(url, timeout=60).headers["Content-Length"] == str(len(data))
    wait_for(lambda: counts()[1] > 0, timeout=10, what="the upstream GET in its log")
    assert counts() == (1, 1)

    missing = "sha256:" + "e" * 64
    resp = requests.head(v2(server, "hub", f"{name}/blobs/{missing}"), timeout=60)
    assert resp.status_code == 404
    assert blob_gets(anonymous.registry.access_log(), missing) == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_cold_manifest_pulls_make_one_upstream_get(
    tmp_path: Path, portway_factory: PortwayFactory, workers: int
) -> None:
    registry = Distribution(tmp_path / "upstream").start()
    try:
        image = Pusher(registry.url).push_image("team/app", "v1", seed=5)
        server = portway_factory(repositories=[proxy("hub", registry.url)], workers=workers)
        barrier = threading.Barrier(20)

        def one(_: int) -> str:
            barrier.wait()
            resp = get_manifest(server, "hub", "team/app", "v1")
            assert resp.status_code == 200
            return sha256(resp.content)

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            assert set(pool.map(one, range(20))) == {image.digest}
        assert registry.access_log().count('"GET /v2/team/app/manifests/v1 ') == 1
    finally:
        registry.stop()


def _paused_blob(data: bytes, release: asyncio.Event, sent_half: threading.Event) -> Any:
    """Send the first half of `data`, then wait for `release` before the rest."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_length = len(data)
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        half = len(data) // 2
        await response.write(data[:half])
        sent_half.set()
        await release.wait()
        await response.write(data[half:])
        await response.write_eof()
        return response

    return handler


def test_first_client_is_served_while_the_upstream_still_sends(
    faults: FaultServer, loop_thread: BackgroundLoop, portway_factory: PortwayFactory
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    digest = sha256(data)
    release = loop_thread.run(_make_event())
    sent_half = threading.Event()
    faults.route(f"/v2/team/slow/blobs/{digest}", _paused_blob(data, release, sent_half))
    server = portway_factory(repositories=[proxy("hub", faults.url)])
    with requests.get(v2(server, "hub", f"team/slow/blobs/{digest}"), stream=True, timeout=30) as r:
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == len(data)
        first = r.raw.read(len(data) // 4)
        # a quarter of the blob arrived while the upstream holds back the second half
        assert len(first) == len(data) // 4 and sent_half.is_set()
        assert not blob_is_cached(server, digest)
        loop_thread.loop.call_soon_threadsafe(release.set)
        rest = r.raw.read()
    assert first + rest == data
    wait_for(lambda: blob_is_cached(server, digest), what="the blob in the cache")


async def _make_event() -> asyncio.Event:
    return asyncio.Event()


def test_client_hanging_up_does_not_abort_the_cache_fill(
    faults: FaultServer, loop_thread: BackgroundLoop, portway_factory: PortwayFactory
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    digest = sha256(data)
    release = loop_thread.run(_make_event())
    sent_half = threading.Event()
    path = f"/v2/team/slow/blobs/{digest}"
    faults.route(path, _paused_blob(data, release, sent_half))
    server = portway_factory(repositories=[proxy("hub", faults.url)])
    host, port = server.host.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        request = (
            f"GET /repository/hub/v2/team/slow/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )
        sock.sendall(request.encode())
        assert sock.recv(65536)  # headers and the first bytes, then the client leaves
        assert sent_half.wait(10)
    loop_thread.loop.call_soon_threadsafe(release.set)
    wait_for(lambda: blob_is_cached(server, digest), what="the blob in the cache")
    assert faults.hits.count(path) == 1
    assert get_blob(server, "hub", "team/slow", digest).content == data
    assert faults.hits.count(path) == 1


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("workers", "clients"), [(1, 1), (2, 8)])
def test_upstream_killed_mid_blob_caches_nothing_then_recovers(
    anonymous: Upstream,
    portway_factory: PortwayFactory,
    tmp_path: Path,
    workers: int,
    clients: int,
) -> None:
    """The upstream dies mid-blob: every client gets a short body or a cut connection,
    nothing is cached, no lock or spool is left, and the next pull (upstream back) works.
    With 2 workers the clients land on both: one worker fetches, the other mirrors it."""
    data = os.urandom(4 * 1024 * 1024)
    image = f"team/killed{workers}"
    digest = Pusher(anonymous.url).push_blob(image, data)
    relay = Relay(tmp_path, anonymous.registry.port, rate=2 * 1024 * 1024).start()
    try:
        server = portway_factory(repositories=[proxy("hub", relay.url)], workers=workers)
        url = v2(server, "hub", f"{image}/blobs/{digest}")
        responses = [requests.get(url, stream=True, timeout=30) for _ in range(clients)]
        try:
            for resp in responses:
                assert resp.status_code == 200
                assert resp.raw.read(64 * 1024)
            relay.kill()  # the upstream dies with most of the blob unsent
            for resp in responses:
                try:
                    got = 64 * 1024 + len(resp.raw.read())
                except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
                    continue  # a cut connection: the error a client must see
                assert got < len(data), "the whole blob arrived although the upstream died"
        finally:
            for resp in responses:
                resp.close()
        storage = server.data_dir / "storage"
        wait_for(
            lambda: (
                not any((storage / "locks").iterdir())
                and not any((storage / "uploads" / "spool").iterdir())
            ),
            what="locks and spools released",
        )
        assert not blob_is_cached(server, digest)
        assert requests.head(url, timeout=30).status_code != 200  # still down, never cached
        relay.start()  # the upstream is back on the same address
        again = get_blob(server, "hub", image, digest)
        assert again.status_code == 200 and sha256(again.content) == digest
        wait_for(lambda: blob_is_cached(server, digest), what="the blob in the cache")
    finally:
        relay.stop()


def test_upstream_stopped_cached_images_pull_uncached_get_a_clear_error(
    tmp_path: Path,
    portway_factory: PortwayFactory,
    oci_image: OciImage,
    multiarch_image: MultiArchImage,
) -> None:
    registry = Distribution(tmp_path / "upstream").start()
    _seed(registry, oci_image, multiarch_image)
    # every tag is stale at once, so each pull asks the upstream first
    server = portway_factory(repositories=[proxy("hub", registry.url, metadata_max_age=0)])
    pull(server, "hub", "team/app:v1", tmp_path / "cold")
    registry.stop()

    pull(server, "hub", "team/app:v1", tmp_path / "stale")
    assert pulled_manifest_digest(tmp_path / "stale") == oci_image.manifest_digest
    assert "serving cached team/app:v1" in server.log()
    by_digest = get_manifest(server, "hub", "team/app", oci_image.manifest_digest)
    assert by_digest.status_code == 200
    tags = requests.get(v2(server, "hub", "team/app/tags/list"), timeout=10)
    assert tags.status_code == 200 and tags.json()["tags"] == ["v1"]  # the cached ones

    # not cached, upstream down: a 404 whose message says why (clients print a 4xx's message)
    resp = get_manifest(server, "hub", "team/multi", "multi")
    assert resp.status_code == 404, resp.text
    code, message = oci_error(resp)
    assert code == "MANIFEST_UNKNOWN"
    assert message.startswith(f"not cached in hub; upstream {registry.url} unreachable ("), message
    failed = skopeo(
        "copy",
        *NO_TLS,
        f"docker://{server.image('team/multi:multi', 'hub')}",
        f"oci:{tmp_path / 'x'}:x",
        check=False,
    )
    assert (
        failed.returncode != 0
        and f"manifest unknown: not cached in hub; upstream {registry.url}" in failed.stderr
    )

    # after repeated failures the upstream is no longer asked, and the CLI says so
    for _ in range(6):
        get_manifest(server, "hub", "team/multi", "multi")
    blocked = get_manifest(server, "hub", "team/multi", "multi")
    assert blocked.status_code == 404
    assert "blocked (not contacted until" in oci_error(blocked)[1]

    def shows_blocked() -> bool:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "portway",
                "repo",
                "show",
                "hub",
                "--config",
                str(server.config_path),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        upstream = json.loads(out.stdout).get("upstream", {})
        return bool(upstream.get("blocked")) and upstream.get("consecutive_failures", 0) >= 5

    wait_for(shows_blocked, timeout=10, what="`portway repo show` reporting the block")


def test_rate_limited_and_unavailable_upstreams(
    faults: FaultServer, portway_factory: PortwayFactory
) -> None:
    faults.route(
        "/v2/team/app/manifests/v1",
        fixed(
            429,
            b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}',
            {"Retry-After": "30", "Content-Type": "application/json"},
        ),
    )
    faults.route("/v2/team/down/manifests/v1", fixed(503, b"maintenance"))
    faults.route("/v2/team/down/blobs/" + "sha256:" + "a" * 64, fixed(503, b"maintenance"))
    server = portway_factory(repositories=[proxy("limited", faults.url), proxy("down", faults.url)])
    resp = get_manifest(server, "limited", "team/app", "v1")
    assert resp.status_code == 429, resp.text
    code, message = oci_error(resp)
    assert code == "TOOMANYREQUESTS" and "429" in message and "30" in message
    # the upstream asked for 30 s of quiet: the next request does not reach it
    hits = len(faults.hits)
    again = get_manifest(server, "limited", "team/app", "v1")
    assert again.status_code == 404 and len(faults.hits) == hits, again.text
    assert oci_error(again)[0] == "MANIFEST_UNKNOWN" and "blocked" in oci_error(again)[1]

    resp = get_manifest(server, "down", "team/down", "v1")
    assert resp.status_code == 404, resp.text
    code, message = oci_error(resp)
    assert code == "MANIFEST_UNKNOWN" and "503" in message
    # a blob (after its manifest was served) keeps its 5xx: clients retry layer downloads
    blob = get_blob(server, "down", "team/down", "sha256:" + "a" * 64)
    assert blob.status_code == 502 and "503" in oci_error(blob)[1]


def test_corrupted_upstream_body_is_never_cached(
    faults: FaultServer, portway_factory: PortwayFactory
) -> None:
    good = os.urandom(512 * 1024)
    digest = sha256(good)
    bad = bytearray(good)
    bad[1000] ^= 0xFF
    path = f"/v2/team/app/blobs/{digest}"
    faults.route(path, fixed(200, bytes(bad), {"Content-Type": "application/octet-stream"}))
    server = portway_factory(repositories=[proxy("hub", faults.url)])
    # the digest is checked before the last bytes go out: the client sees a short body
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get_blob(server, "hub", "team/app", digest)
    time.sleep(0.3)
    assert not blob_is_cached(server, digest)
    faults.route(path, fixed(200, good, {"Content-Type": "application/octet-stream"}))
    again = get_blob(server, "hub", "team/app", digest)
    assert again.status_code == 200 and again.content == good
    assert faults.hits.count(path) == 2
    wait_for(lambda: blob_is_cached(server, digest), what="the good blob in the cache")


def test_negative_cache_remembers_upstream_404(
    faults: FaultServer, portway_factory: PortwayFactory
) -> None:
    server = portway_factory(
        repositories=[
            proxy("remember", faults.url),
            proxy("forget", faults.url, negative_cache_ttl=0),
        ]
    )
    path = "/v2/team/none/manifests/v1"
    for repo in ("remember", "remember", "forget", "forget"):
        resp = get_manifest(server, repo, "team/none", "v1")
        assert resp.status_code == 404 and oci_error(resp)[0] == "MANIFEST_UNKNOWN"
    assert faults.hits.count(path) == 3


@pytest.mark.parametrize("reference", ["-bad", "a+b", "sha256:" + "0" * 63, "md5:" + "0" * 32])
def test_reference_neither_tag_nor_digest_is_unknown_and_not_asked_upstream(
    anonymous: Upstream, portway_factory: PortwayFactory, reference: str
) -> None:
    server = portway_factory(
        repositories=[hosted("h"), proxy("hub", anonymous.url), group("g", ["h", "hub"])]
    )
    before = manifest_requests(anonymous.registry.access_log(), "team/app")
    for repository in ("hub", "g"):
        resp = get_manifest(server, repository, "team/app", reference)
        assert resp.status_code == 404, resp.text
        assert oci_error(resp)[0] == "MANIFEST_UNKNOWN"
        url = v2(server, repository, f"team/app/manifests/{reference}")
        assert requests.head(url, timeout=10).status_code == 404
    assert manifest_requests(anonymous.registry.access_log(), "team/app") == before


def test_tags_are_refreshed_after_metadata_max_age(
    tmp_path: Path, portway_factory: PortwayFactory
) -> None:
    registry = Distribution(tmp_path / "upstream").start()
    try:
        pusher = Pusher(registry.url)
        first = pusher.push_image("team/app", "v1", seed=1)
        server = portway_factory(
            repositories=[
                proxy("fresh", registry.url, metadata_max_age=0),
                proxy("sticky", registry.url),
            ]
        )
        for repo in ("fresh", "sticky"):
            resp = get_manifest(server, repo, "team/app", "v1")
            assert resp.headers["Docker-Content-Digest"] == first.digest
        heads_before = registry.access_log().count('"HEAD /v2/team/app/manifests/v1')
        # unchanged upstream: the refresh is one HEAD, no new GET
        assert get_manifest(server, "fresh", "team/app", "v1").status_code == 200
        log = registry.access_log()
        assert log.count('"HEAD /v2/team/app/manifests/v1') == heads_before + 1
        assert log.count('"GET /v2/team/app/manifests/v1') == 2
        second = pusher.push_image("team/app", "v1", seed=2)
        fresh = get_manifest(server, "fresh", "team/app", "v1")
        assert fresh.headers["Docker-Content-Digest"] == second.digest
        sticky = get_manifest(server, "sticky", "team/app", "v1")
        assert sticky.headers["Docker-Content-Digest"] == first.digest
    finally:
        registry.stop()


def test_push_to_a_proxy_is_refused(
    anonymous: Upstream, portway_factory: PortwayFactory, oci_image: OciImage, tmp_path: Path
) -> None:
    server = portway_factory(repositories=[proxy("hub", anonymous.url)])
    resp = requests.post(v2(server, "hub", "team/new/blobs/uploads/"), timeout=10)
    assert resp.status_code == 403, resp.text
    code, message = oci_error(resp)
    assert code == "DENIED"
    assert "proxy" in message and anonymous.url in message
    put = requests.put(
        v2(server, "hub", "team/new/manifests/v1"),
        data=b"{}",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert put.status_code == 403 and oci_error(put)[0] == "DENIED"
    failed = skopeo(
        "copy",
        *NO_TLS,
        oci_image.ref,
        f"docker://{server.image('team/new:v1', 'hub')}",
        check=False,
    )
    assert failed.returncode != 0 and "proxy" in failed.stderr


FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


@pytest.mark.parametrize(
    ("cache", "allowed", "served"),
    [(True, True, True), (True, False, False), (False, True, False)],
    ids=["cached-from-allowed-url", "url-not-allowed", "caching-off"],
)
def test_foreign_layers(
    faults: FaultServer,
    portway_factory: PortwayFactory,
    cache: bool,
    allowed: bool,
    served: bool,
) -> None:
    """A non-distributable layer stays a URL in the manifest; with `cache_foreign_layers` and
    a URL the allow-list accepts, the proxy fetches it from that URL, verifies and caches it."""
    layer = os.urandom(300 * 1024)
    digest = sha256(layer)
    faults.route("/layers/base.tar.gz", fixed(200, layer, {"Content-Type": "application/gzip"}))
    url = f"{faults.url}/layers/base.tar.gz"
    upstream = portway_factory()
    pusher = Pusher(upstream.repository_url("docker-hosted"))
    config = b'{"architecture":"amd64","os":"windows","rootfs":{"type":"layers"}}'
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": pusher.push_blob("win/app", config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": FOREIGN_LAYER, "digest": digest, "size": len(layer), "urls": [url]}
            ],
        }
    ).encode()
    pusher.push_manifest(
        "win/app", "1", manifest, "application/vnd.docker.distribution.manifest.v2+json"
    )
    pattern = re.escape(faults.url) + "/layers/.*" if allowed else r"https://cdn\.invalid/.*"
    server = portway_factory(
        repositories=[
            proxy(
                "hub",
                upstream.repository_url("docker-hosted"),
                cache_foreign_layers=cache,
                foreign_layer_urls=[pattern],
            )
        ]
    )
    got = get_manifest(server, "hub", "win/app", "1")
    assert got.status_code == 200 and json.loads(got.content)["layers"][0]["urls"] == [url]
    blob = get_blob(server, "hub", "win/app", digest)
    if not served:
        assert blob.status_code == 404 and oci_error(blob)[0] == "BLOB_UNKNOWN"
        assert "/layers/base.tar.gz" not in faults.hits
        return
    assert blob.status_code == 200 and blob.content == layer
    wait_for(lambda: blob_is_cached(server, digest), what="the foreign layer in the cache")
    faults.route("/layers/base.tar.gz", fixed(404))
    again = get_blob(server, "hub", "win/app", digest)
    assert again.status_code == 200 and again.content == layer
    assert faults.hits.count("/layers/base.tar.gz") == 1
