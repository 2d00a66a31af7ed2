"""Garbage collection and the proxy cache fill, against a real upstream (CNCF distribution)
and a real `portway serve`: a `portway gc` pass run after the manifest was cached and before
its blobs were (or right after they were) deletes nothing a client is about to pull; after
cleanup expired a cached image and a pass freed its blobs, the cache claims none of them and
the next pull fetches them from the upstream again, complete (issue 12, the Harbor bug:
"Layer already exists", then MANIFEST_BLOB_UNKNOWN)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from proxy_support import ACCEPT, blob_gets, blob_is_cached, cached_soon, proxy, v2, wait_for
from support import toml
from support.distribution import Distribution
from support.engines import skopeo
from support.images import MultiArchImage, OciImage
from support.server import PortwayServer

HOLD = 4  # [server] gc_hold (a loaded machine needs a few seconds)
AGED = HOLD + 1.5  # a candidate this old is acted on
NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")
IMAGE = "team/app"
MULTI = "team/multi"

# On the data folder's SQLite and on PostgreSQL (a fresh database per test), two workers.
pytestmark = pytest.mark.parametrize("server_database", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def upstream(
    tmp_path: Path, oci_image: OciImage, multiarch_image: MultiArchImage
) -> Iterator[Distribution]:
    registry = Distribution(tmp_path / "upstream").start()
    skopeo("copy", "--quiet", *NO_TLS, oci_image.ref, f"docker://{registry.host}/{IMAGE}:v1")
    skopeo("copy", "--quiet", "--all", *NO_TLS, multiarch_image.ref,
           f"docker://{registry.host}/{MULTI}:multi")  # fmt: skip
    yield registry
    registry.stop()


@pytest.fixture
def server(
    tmp_path: Path, upstream: Distribution, server_database: str | None
) -> Iterator[PortwayServer]:
    repository = proxy("hub", upstream.url, cleanup_policies=["expire"])
    srv = PortwayServer(tmp_path / "portway", server={"gc_hold": HOLD}, workers=2,
                        repositories=[repository], database_url=server_database)  # fmt: skip
    doc = srv._config()
    doc["cleanup_policy"] = [{"name": "expire", "cache_expiry_days": 0}]
    srv.config_path.write_text(toml.dumps(doc))
    srv.start(timeout=60)
    yield srv
    srv.stop()


def _cli(server: PortwayServer, command: str) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-m", "portway", command, "--config", str(server.config_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def _gc(server: PortwayServer) -> set[str]:
    """A `portway gc` pass; the digests of the blobs it deleted."""
    return {b["digest"] for b in _cli(server, "gc")["blobs"]}


def _digests(image: OciImage) -> set[str]:
    return {image.config_digest, *(layer.digest for layer in image.layers)}


def _blob(server: PortwayServer, digest: str) -> requests.Response:
    return requests.get(v2(server, "hub", f"{IMAGE}/blobs/{digest}"), timeout=60)


def _cached(server: PortwayServer, digests: set[str]) -> None:
    """The fills publish after the client had its bytes: wait for the files."""
    wait_for(lambda: all(blob_is_cached(server, d) for d in digests), what="the cache fills")


def _pull_complete(server: PortwayServer, image: OciImage, dest: Path) -> None:
    """skopeo copies the whole image (it checks every blob's digest) to an OCI layout."""
    skopeo("copy", "--quiet", *NO_TLS, f"docker://{server.image(f'{IMAGE}:v1', 'hub')}",
           f"oci:{dest}:pulled")  # fmt: skip
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][-1]["digest"] == image.manifest_digest
    for digest in _digests(image):
        assert (dest / "blobs" / "sha256" / digest.partition(":")[2]).is_file(), digest


def test_gc_between_the_manifest_fill_and_the_blob_fills(
    server: PortwayServer, upstream: Distribution, oci_image: OciImage, tmp_path: Path
) -> None:
    manifest = requests.get(v2(server, "hub", f"{IMAGE}/manifests/v1"),
                            headers={"Accept": ACCEPT}, timeout=60)  # fmt: skip
    assert manifest.status_code == 200, manifest.text
    config = _blob(server, oci_image.config_digest)  # one blob cached, the others not yet
    assert config.status_code == 200
    _cached(server, {oci_image.config_digest})
    time.sleep(AGED)
    assert _gc(server) == set()  # the cached manifest needs them all
    assert cached_soon(server, oci_image.config_digest)
    for layer in oci_image.layers:
        got = _blob(server, layer.digest)
        assert got.status_code == 200 and len(got.content) == layer.size, layer.digest
    _cached(server, _digests(oci_image))
    time.sleep(AGED)
    assert _gc(server) == set()  # right after the fills: the new links are needed too
    for digest in _digests(oci_image):
        assert cached_soon(server, digest), digest
    _pull_complete(server, oci_image, tmp_path / "pulled")
    log = upstream.access_log()
    assert all(blob_gets(log, d) == 1 for d in _digests(oci_image))  # all from the cache


def test_an_expired_cached_image_is_fetched_again_complete_after_gc(
    server: PortwayServer, upstream: Distribution, oci_image: OciImage, tmp_path: Path
) -> None:
    _pull_complete(server, oci_image, tmp_path / "first")
    _cached(server, _digests(oci_image))
    time.sleep(1.0)  # older than "now" for cache_expiry_days = 0
    removed = _cli(server, "cleanup")
    assert oci_image.manifest_digest in json.dumps(removed), removed
    time.sleep(AGED)
    assert _gc(server) == _digests(oci_image)
    assert not any(blob_is_cached(server, d) for d in _digests(oci_image))
    for digest in _digests(oci_image):  # the cache claims none of them: each comes again
        got = _blob(server, digest)
        assert got.status_code == 200, (digest, got.text[:300])
    _pull_complete(server, oci_image, tmp_path / "again")
    log = upstream.access_log()
    assert all(blob_gets(log, d) == 2 for d in _digests(oci_image)), log[-2000:]
    _cached(server, _digests(oci_image))
    time.sleep(AGED)
    assert _gc(server) == set()  # the refilled cache is in use again
    _pull_complete(server, oci_image, tmp_path / "third")


def _multi_blobs(multi: MultiArchImage) -> set[str]:
    return {d for image in multi.images for d in _digests(image)}


def _pull_all(server: PortwayServer, multi: MultiArchImage, dest: Path) -> None:
    skopeo("copy", "--quiet", "--all", *NO_TLS,
           f"docker://{server.image(f'{MULTI}:multi', 'hub')}", f"oci:{dest}:pulled")  # fmt: skip
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][-1]["digest"] == multi.index_digest
    for digest in _multi_blobs(multi) | {i.manifest_digest for i in multi.images}:
        assert (dest / "blobs" / "sha256" / digest.partition(":")[2]).is_file(), digest


def test_a_multi_arch_index_through_gc_and_expiry(
    server: PortwayServer, upstream: Distribution, multiarch_image: MultiArchImage, tmp_path: Path
) -> None:
    """The index first, a pass, then every platform: the children and their layers stay
    with the index; expired together, freed together, fetched again complete."""
    multi = multiarch_image
    index = requests.get(v2(server, "hub", f"{MULTI}/manifests/multi"),
                         headers={"Accept": ACCEPT}, timeout=60)  # fmt: skip
    assert index.status_code == 200, index.text
    time.sleep(AGED)
    assert _gc(server) == set()
    _pull_all(server, multi, tmp_path / "first")
    _cached(server, _multi_blobs(multi))
    time.sleep(AGED)
    assert _gc(server) == set()
    time.sleep(1.0)
    _cli(server, "cleanup")
    time.sleep(AGED)
    assert _gc(server) == _multi_blobs(multi)  # cleanup took the index and its children
    assert not any(blob_is_cached(server, d) for d in _multi_blobs(multi))
    _pull_all(server, multi, tmp_path / "again")
    _cached(server, _multi_blobs(multi))
    log = upstream.access_log()
    assert all(blob_gets(log, d) == 2 for d in _multi_blobs(multi)), log[-2000:]
