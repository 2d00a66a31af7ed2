"""A real server with `[storage] type = "s3"` on Ceph RGW, driven by real clients: skopeo,
podman and docker push and pull; blob GETs answered by presigned redirects per the
repository's `redirect` (off, always, auto for the client networks), HEAD always by Portway."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from s3_support import bucket_keys, s3_server
from support.ceph import CephRGW
from support.cluster import ClusterNode
from support.distribution import Distribution
from support.dockerd import Dockerd
from support.engines import ContainerStorage, skopeo
from support.images import OciImage, files_in_docker_archive, read_layout_manifest

NO_TLS = "--tls-verify=false"


@pytest.fixture(scope="module")
def bucket(ceph_rgw: CephRGW) -> str:
    return ceph_rgw.make_bucket(f"server-{uuid.uuid4().hex[:8]}")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(tmp_path: Path, ceph_rgw: CephRGW, bucket: str) -> Iterator[ClusterNode]:
    node = s3_server(tmp_path, ceph_rgw, bucket).start(timeout=60)
    yield node
    node.stop()


def test_skopeo_podman_and_docker_push_and_pull_on_s3(
    server: ClusterNode, ceph_rgw: CephRGW, bucket: str, oci_image: OciImage,
    container_storage: ContainerStorage, dockerd: Dockerd, tmp_path: Path,
) -> None:
    prefix = server.tables["storage"]["prefix"]
    name = server.image("s3/skopeo")
    skopeo("copy", "--dest-tls-verify=false", "--digestfile", str(tmp_path / "d"),
           oci_image.ref, f"docker://{name}:v1")
    pushed = (tmp_path / "d").read_text().strip()
    assert pushed == oci_image.manifest_digest
    skopeo("copy", "--src-tls-verify=false", f"docker://{name}:v1", f"oci:{tmp_path / 'out'}:v1")
    assert read_layout_manifest(tmp_path / "out", "v1")[0] == pushed

    podman = container_storage.podman
    local_id = podman("pull", "--quiet", oci_image.ref).stdout.split()[-1]
    target = f"{server.image('s3/podman')}:v1"
    podman("tag", local_id, target)
    podman("push", NO_TLS, target)
    podman("rmi", "--force", local_id)
    podman("pull", NO_TLS, target)
    assert podman("image", "inspect", "--format", "{{.Id}}", target).stdout.strip() == local_id

    docker = dockerd.docker
    local = dockerd.load_oci(oci_image.ref, f"portway-test/s3-{server.port}:v1", tmp_path)
    image_id = docker("image", "inspect", "--format", "{{.Id}}", local).stdout.strip()
    target = f"{server.image('s3/docker')}:v1"
    docker("tag", local, target)
    try:
        docker("push", target)
        docker("rmi", local, target)
        docker("pull", target)
        archive = tmp_path / "saved.tar"
        docker("save", "-o", str(archive), image_id)
        assert files_in_docker_archive(archive) == oci_image.files
    finally:
        docker("rmi", "--force", image_id, check=False)

    stored = bucket_keys(ceph_rgw, bucket, prefix + "/")
    hexes = [layer.digest.removeprefix("sha256:") for layer in oci_image.layers]
    layers = {f"{prefix}/blobs/sha256/{h[:2]}/{h}" for h in hexes}
    assert layers <= set(stored), stored
    assert not [k for k in stored if "/uploads/" in k or k.startswith("(multipart)")], stored
    assert not (server.data_dir / "storage").exists(), "an S3 node keeps no blob files"


def _layer_url(node: ClusterNode, image: str, digest: str, repo: str = "docker-hosted") -> str:
    return f"{node.url}/repository/{repo}/v2/{image}/blobs/{digest}"


REDIRECT_REPOS = [
    {"name": "docker-hosted", "type": "hosted", "path_routing": True},  # [storage] redirect
    {"name": "never", "type": "hosted", "path_routing": True, "redirect": "off"},
    {"name": "always", "type": "hosted", "path_routing": True, "redirect": "always"},
]


@pytest.mark.parametrize("networks", [["127.0.0.0/8"], ["10.0.0.0/8"]], ids=["inside", "outside"])
def test_redirect_modes(
    tmp_path: Path, ceph_rgw: CephRGW, bucket: str, oci_image: OciImage,
    container_storage: ContainerStorage, networks: list[str],
) -> None:
    """`auto` on [storage]; one repository never redirects, one always does. A redirected GET
    is a 307 to a URL signed for `public_endpoint` (here the RGW by the name localhost);
    skopeo and podman follow it; HEAD is Portway's own answer."""
    public = ceph_rgw.endpoint.replace("127.0.0.1", "localhost")
    node = s3_server(
        tmp_path, ceph_rgw, bucket, repositories=REDIRECT_REPOS, redirect="auto",
        redirect_networks=networks, public_endpoint=public, redirect_expiry=120,
        server={"trusted_proxies": ["127.0.0.1/32"]},
    ).start(timeout=60)
    try:
        layer = oci_image.layers[0].digest
        for repo in ("docker-hosted", "never", "always"):
            image = f"{node.host}/{repo}/app"
            skopeo("copy", "--dest-tls-verify=false", oci_image.ref, f"docker://{image}:v1")
        inside = networks == ["127.0.0.0/8"]
        for repo, redirected in (("docker-hosted", inside), ("never", False), ("always", True)):
            got = requests.get(_layer_url(node, "app", layer, repo), allow_redirects=False)
            if redirected:
                assert got.status_code == 307, (repo, got.status_code, got.text)
                location = got.headers["Location"]
                assert location.startswith(public + "/"), location
                assert "X-Amz-Expires=120" in location and "X-Amz-Signature=" in location
                assert got.headers["Docker-Content-Digest"] == layer
                fetched = requests.get(location)  # straight from the bucket, no credentials
                assert fetched.status_code == 200 and sha256(fetched.content) == layer
            else:
                assert got.status_code == 200, (repo, got.status_code)
                assert sha256(got.content) == layer
            head = requests.head(_layer_url(node, "app", layer, repo), allow_redirects=False)
            assert head.status_code == 200 and "Location" not in head.headers
            assert int(head.headers["Content-Length"]) == oci_image.layers[0].size
        # auto decides on the client address a trusted proxy forwarded
        forwarded = requests.get(
            _layer_url(node, "app", layer), allow_redirects=False,
            headers={"X-Forwarded-For": "10.1.2.3"},
        )
        assert forwarded.status_code == (200 if inside else 307)

        podman = container_storage.podman
        for repo in ("docker-hosted", "never", "always"):
            image = f"{node.host}/{repo}/app:v1"
            out = tmp_path / f"pulled-{repo}"
            skopeo("copy", "--src-tls-verify=false", f"docker://{image}", f"oci:{out}:v1")
            digest, manifest = read_layout_manifest(out, "v1")
            assert digest == oci_image.manifest_digest
            for entry in manifest["layers"]:
                blob = out / "blobs" / "sha256" / entry["digest"].removeprefix("sha256:")
                assert sha256(blob.read_bytes()) == entry["digest"]
            podman("pull", NO_TLS, image)
            podman("rmi", "--force", image)
    finally:
        node.stop()


def test_proxy_caches_into_the_bucket(
    tmp_path: Path, ceph_rgw: CephRGW, bucket: str, oci_image: OciImage
) -> None:
    """A proxy repository on S3: the first pull streams from the upstream (CNCF distribution)
    while the cache fills; the verified layers land in the bucket, and with the upstream gone
    the image still comes from the cache."""
    upstream = Distribution(tmp_path / "upstream").start()
    try:
        skopeo("copy", "--dest-tls-verify=false", oci_image.ref,
               f"docker://{upstream.host}/team/app:v1")
        repos = [{"name": "hub", "type": "proxy", "path_routing": True,
                  "remote_url": upstream.url}]
        node = s3_server(tmp_path, ceph_rgw, bucket, repositories=repos).start(timeout=60)
        try:
            out = tmp_path / "cold"
            skopeo("copy", "--src-tls-verify=false", f"docker://{node.host}/hub/team/app:v1",
                   f"oci:{out}:v1")
            assert read_layout_manifest(out, "v1")[0] == oci_image.manifest_digest
            prefix = node.tables["storage"]["prefix"]
            hexes = [layer.digest.removeprefix("sha256:") for layer in oci_image.layers]
            wanted = {f"{prefix}/blobs/sha256/{h[:2]}/{h}" for h in hexes}
            deadline = time.monotonic() + 30  # the cache commits after the client has it
            while not wanted <= set(bucket_keys(ceph_rgw, bucket, prefix + "/")):
                assert time.monotonic() < deadline, bucket_keys(ceph_rgw, bucket, prefix + "/")
                time.sleep(0.5)
            upstream.stop()
            warm = tmp_path / "warm"
            skopeo("copy", "--src-tls-verify=false", f"docker://{node.host}/hub/team/app:v1",
                   f"oci:{warm}:v1")
            digest, manifest = read_layout_manifest(warm, "v1")
            assert digest == oci_image.manifest_digest
            for entry in manifest["layers"]:
                blob = warm / "blobs" / "sha256" / entry["digest"].removeprefix("sha256:")
                assert sha256(blob.read_bytes()) == entry["digest"]
            assert not (node.data_dir / "storage").exists()
        finally:
            node.stop()
    finally:
        upstream.stop()
