"""Round trips with real clients: skopeo, podman, buildah, and the Docker CLI with a real dockerd.

Images go in through repository-path routing (`127.0.0.1:PORT/docker-hosted/<image>`), come
back out, and are compared by digest and by the files inside their layers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from support.distribution import Distribution
from support.dockerd import Dockerd
from support.engines import ContainerStorage, skopeo
from support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    MultiArchImage,
    OciImage,
    files_in_docker_archive,
    files_in_layer,
    make_oci_layout,
    read_layout_manifest,
)
from support.runner import CommandResult
from support.server import PortwayServer

Registry = PortwayServer | Distribution

DOCKER_V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
NO_TLS_SRC = "--src-tls-verify=false"
NO_TLS_DEST = "--dest-tls-verify=false"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push(source: str, dest: str, digestfile: Path, *extra: str) -> tuple[str, str]:
    """skopeo copy `source` → `dest`; returns (manifest digest, skopeo's output).

    `--debug` in `extra` goes before the command, where skopeo takes it.
    """
    debug = ["--debug"] if "--debug" in extra else []
    flags = [flag for flag in extra if flag != "--debug"]
    out = skopeo(*debug, "copy", NO_TLS_DEST, "--digestfile", str(digestfile), *flags, source, dest)
    return digestfile.read_text().strip(), out.output


def raw_manifest(ref: str) -> bytes:
    out = skopeo("inspect", "--raw", "--tls-verify=false", ref)
    # skopeo prints the bytes it received; the digest is over exactly those bytes.
    return out.stdout.encode()


def layout_files(layout: Path, manifest: dict[str, object]) -> dict[str, str]:
    """Files inside every layer a manifest in `layout` references."""
    files: dict[str, str] = {}
    layers = manifest["layers"]
    assert isinstance(layers, list)
    for layer in layers:
        blob = layout / "blobs" / "sha256" / layer["digest"].removeprefix("sha256:")
        assert blob.exists(), f"layer {layer['digest']} missing from {layout}"
        assert sha256(blob.read_bytes()) == layer["digest"]
        files.update(files_in_layer(blob.read_bytes()))
    return files


# -- skopeo ---------------------------------------------------------------------------------

# Client round trips on the embedded SQLite and on a server whose [database] is PostgreSQL.
BOTH_DATABASES = pytest.mark.parametrize(
    "server_database", ["sqlite", "postgresql"], indirect=True
)


@BOTH_DATABASES
def test_skopeo_oci_push_pull_by_tag_and_digest(
    registry: Registry, oci_image: OciImage, tmp_path: Path
) -> None:
    name = registry.image("skopeo/oci")
    pushed, _ = push(oci_image.ref, f"docker://{name}:v1", tmp_path / "digest")
    # Layers are gzipped already and the format is unchanged: skopeo sends the manifest as is.
    assert pushed == oci_image.manifest_digest

    raw = raw_manifest(f"docker://{name}:v1")
    assert sha256(raw) == pushed
    manifest = json.loads(raw)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer.digest for layer in oci_image.layers
    ]

    for ref, out_tag in ((f"{name}:v1", "by-tag"), (f"{name}@{pushed}", "by-digest")):
        out = tmp_path / out_tag
        skopeo("copy", NO_TLS_SRC, f"docker://{ref}", f"oci:{out}:{out_tag}")
        digest, pulled = read_layout_manifest(out, out_tag)
        assert digest == pushed, ref
        assert pulled["config"]["digest"] == oci_image.config_digest
        assert layout_files(out, pulled) == oci_image.files


def test_skopeo_docker_v2s2_push_pull(
    registry: Registry, oci_image: OciImage, tmp_path: Path
) -> None:
    name = registry.image("skopeo/v2s2")
    pushed, _ = push(oci_image.ref, f"docker://{name}:v1", tmp_path / "digest", "--format", "v2s2")

    raw = raw_manifest(f"docker://{name}:v1")
    assert sha256(raw) == pushed
    manifest = json.loads(raw)
    assert manifest["mediaType"] == DOCKER_V2S2
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer.digest for layer in oci_image.layers
    ]

    inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{name}:v1").stdout)
    assert inspected["Digest"] == pushed
    assert inspected["Architecture"] == "amd64"
    assert inspected["Layers"] == [layer.digest for layer in oci_image.layers]

    by_digest = json.loads(raw_manifest(f"docker://{name}@{pushed}"))
    assert by_digest == manifest

    out = tmp_path / "pulled"
    skopeo("copy", NO_TLS_SRC, f"docker://{name}@{pushed}", f"dir:{out}")
    assert sha256((out / "manifest.json").read_bytes()) == pushed
    files: dict[str, str] = {}
    for layer in oci_image.layers:
        blob = (out / layer.digest.removeprefix("sha256:")).read_bytes()
        assert sha256(blob) == layer.digest
        files.update(files_in_layer(blob))
    assert files == oci_image.files


DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def dir_files(out: Path, manifest: dict[str, object]) -> dict[str, str]:
    """Files inside every layer of an image pulled with `skopeo copy ... dir:OUT`."""
    files: dict[str, str] = {}
    layers = manifest["layers"]
    assert isinstance(layers, list)
    for layer in layers:
        blob = (out / layer["digest"].removeprefix("sha256:")).read_bytes()
        assert sha256(blob) == layer["digest"]
        files.update(files_in_layer(blob))
    return files


@pytest.mark.parametrize("list_format", ["oci", "v2s2"])
def test_skopeo_multiarch_index(
    registry: Registry, multiarch_image: MultiArchImage, tmp_path: Path, list_format: str
) -> None:
    name = registry.image(f"skopeo/multi-{list_format}")
    extra = ["--all"] if list_format == "oci" else ["--all", "--format", "v2s2"]
    pushed, _ = push(multiarch_image.ref, f"docker://{name}:multi", tmp_path / "digest", *extra)
    if list_format == "oci":
        assert pushed == multiarch_image.index_digest

    raw = raw_manifest(f"docker://{name}:multi")
    assert sha256(raw) == pushed
    index = json.loads(raw)
    assert index["mediaType"] == (OCI_INDEX if list_format == "oci" else DOCKER_LIST)
    children = {
        (m["platform"]["architecture"], m["platform"]["os"]): m["digest"]
        for m in index["manifests"]
    }
    assert children.keys() == multiarch_image.manifest_digests.keys()
    if list_format == "oci":
        assert children == multiarch_image.manifest_digests

    for image in multiarch_image.images:
        child_digest = children[(image.architecture, image.os)]
        child = raw_manifest(f"docker://{name}@{child_digest}")
        assert sha256(child) == child_digest
        assert [layer["digest"] for layer in json.loads(child)["layers"]] == [
            layer.digest for layer in image.layers
        ]
        arch = json.loads(
            skopeo(
                "inspect",
                "--tls-verify=false",
                "--override-arch",
                image.architecture,
                f"docker://{name}:multi",
            ).stdout
        )
        # skopeo resolves the index for that platform ("Digest" stays the index's own).
        assert arch["Architecture"] == image.architecture
        assert arch["Layers"] == [layer.digest for layer in image.layers]

        out = tmp_path / f"child-{image.architecture}"
        skopeo("copy", NO_TLS_SRC, f"docker://{name}@{child_digest}", f"dir:{out}")
        pulled = (out / "manifest.json").read_bytes()
        assert sha256(pulled) == child_digest
        assert dir_files(out, json.loads(pulled)) == image.files

    out = tmp_path / "pulled"
    skopeo("copy", "--all", NO_TLS_SRC, f"docker://{name}@{pushed}", f"dir:{out}")
    assert sha256((out / "manifest.json").read_bytes()) == pushed


def test_skopeo_repush_existing_layers(
    registry: Registry, oci_image: OciImage, tmp_path: Path
) -> None:
    first = registry.image("skopeo/repush")
    pushed, _ = push(oci_image.ref, f"docker://{first}:v1", tmp_path / "d1")

    # Same repository, new tag: every blob is already there, so nothing is uploaded.
    again, debug = push(oci_image.ref, f"docker://{first}:v2", tmp_path / "d2", "--debug")
    assert again == pushed
    for layer in oci_image.layers:
        assert f"Skipping blob {layer.digest} (already present)" in debug, debug[-3000:]
    assert "/blobs/uploads/" not in debug, debug[-3000:]

    # Same tag once more (allowed by the default write policy): nothing changes.
    same, _ = push(oci_image.ref, f"docker://{first}:v1", tmp_path / "d3")
    assert same == pushed

    # Another image in the same registry: blobs come by cross-repository mount or upload.
    other = registry.image("skopeo/repush-other")
    moved, _ = push(f"docker://{first}:v1", f"docker://{other}:v1", tmp_path / "d4", NO_TLS_SRC)
    assert moved == pushed

    for ref in (f"{first}:v1", f"{first}:v2", f"{other}:v1"):
        assert sha256(raw_manifest(f"docker://{ref}")) == pushed, ref

    tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{first}").stdout)
    assert sorted(tags["Tags"]) == ["v1", "v2"]


def test_nexus_path_reaches_the_same_repository(
    registry: Registry, oci_image: OciImage, tmp_path: Path
) -> None:
    if not isinstance(registry, PortwayServer):
        pytest.skip("the /repository/<repo>/v2/ layout is Portway's")
    pushed, _ = push(oci_image.ref, f"docker://{registry.image('nexus/path')}:v1", tmp_path / "d")
    base = registry.repository_url()
    resp = requests.get(
        f"{base}/v2/nexus/path/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=10
    )
    assert resp.status_code == 200, resp.text
    assert sha256(resp.content) == pushed
    assert resp.headers.get("Docker-Content-Digest") == pushed
    layer = oci_image.layers[0]
    blob = requests.get(f"{base}/v2/nexus/path/blobs/{layer.digest}", timeout=10)
    assert blob.status_code == 200
    assert sha256(blob.content) == layer.digest


# -- podman ---------------------------------------------------------------------------------


@BOTH_DATABASES
def test_podman_push_pull(
    registry: Registry,
    oci_image: OciImage,
    container_storage: ContainerStorage,
    tmp_path: Path,
) -> None:
    podman = container_storage.podman
    local_id = podman("pull", "--quiet", oci_image.ref).stdout.split()[-1]
    assert "sha256:" + local_id == oci_image.image_id

    target = f"{registry.image('podman/app')}:v1"
    podman("tag", local_id, target)
    digestfile = tmp_path / "digest"
    podman("push", "--tls-verify=false", "--digestfile", str(digestfile), target)
    pushed = digestfile.read_text().strip()
    assert sha256(raw_manifest(f"docker://{target}")) == pushed

    podman("rmi", "--force", local_id)
    assert podman("image", "exists", target, check=False).returncode == 1

    podman("pull", "--tls-verify=false", target)
    assert podman("image", "inspect", "--format", "{{.Id}}", target).stdout.strip() == local_id

    by_digest = f"{registry.image('podman/app')}@{pushed}"
    podman("rmi", "--force", local_id)
    podman("pull", "--tls-verify=false", by_digest)
    assert podman("image", "inspect", "--format", "{{.Id}}", by_digest).stdout.strip() == local_id

    archive = tmp_path / "saved.tar"
    podman("save", "--format", "docker-archive", "-o", str(archive), by_digest)
    assert files_in_docker_archive(archive) == oci_image.files


# -- buildah --------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["oci", "docker"])
def test_buildah_build_push_pull(
    registry: Registry,
    container_storage: ContainerStorage,
    tmp_path: Path,
    image_format: str,
) -> None:
    buildah = container_storage.buildah
    content = f"built by buildah for portway ({image_format})\n".encode() * 1000
    source = tmp_path / "hello.txt"
    source.write_bytes(content)

    ctr = buildah("from", "scratch").stdout.strip()
    buildah("copy", ctr, str(source), "/data/hello.txt")
    buildah("config", "--cmd", "/data/hello.txt", "--label", "portway.test=buildah", ctr)
    local = f"localhost/buildah-{image_format}:v1"
    image_id = buildah("commit", "--quiet", "--format", image_format, ctr, local).stdout.split()[-1]
    buildah("rm", ctr)

    target = f"{registry.image(f'buildah/{image_format}')}:v1"
    digestfile = tmp_path / "digest"
    buildah(
        "push",
        "--tls-verify=false",
        "--format",
        image_format,
        "--digestfile",
        str(digestfile),
        local,
        f"docker://{target}",
    )
    pushed = digestfile.read_text().strip()
    raw = raw_manifest(f"docker://{target}")
    assert sha256(raw) == pushed
    manifest = json.loads(raw)
    expected_type = OCI_MANIFEST if image_format == "oci" else DOCKER_V2S2
    assert manifest["mediaType"] == expected_type
    assert len(manifest["layers"]) == 1

    buildah("rmi", "--force", local)
    by_digest = f"{registry.image(f'buildah/{image_format}')}@{pushed}"
    for ref in (by_digest, target):
        pulled_id = buildah("pull", "--quiet", "--tls-verify=false", ref).stdout.split()[-1]
        assert pulled_id == image_id, ref

    ctr = buildah("from", "--pull-never", by_digest).stdout.strip()
    mount = Path(buildah("mount", ctr).stdout.strip())
    try:
        assert (mount / "data" / "hello.txt").read_bytes() == content
    finally:
        buildah("umount", ctr, check=False)
        buildah("rm", ctr, check=False)


# -- docker ---------------------------------------------------------------------------------

PUSH_DIGEST_RE = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: \d+")


def test_docker_push_pull(
    registry: Registry, dockerd: Dockerd, oci_image: OciImage, tmp_path: Path
) -> None:
    docker = dockerd.docker
    local = dockerd.load_oci(oci_image.ref, f"portway-test/docker-{registry.port}:v1", tmp_path)
    image_id = docker("image", "inspect", "--format", "{{.Id}}", local).stdout.strip()

    repo = registry.image("docker/app")
    target = f"{repo}:v1"
    docker("tag", local, target)
    try:
        out = docker("push", target).stdout
        match = PUSH_DIGEST_RE.search(out)
        assert match, out
        pushed = match.group(1)
        manifest_raw = raw_manifest(f"docker://{target}")
        assert sha256(manifest_raw) == pushed
        assert json.loads(manifest_raw)["mediaType"] == DOCKER_V2S2

        # A second tag: every layer is already there.
        docker("tag", local, f"{repo}:v2")
        again = docker("push", f"{repo}:v2").stdout
        assert again.count("Layer already exists") == len(oci_image.layers), again
        assert f"digest: {pushed}" in again

        docker("rmi", local, target, f"{repo}:v2")
        assert docker("image", "inspect", image_id, check=False).returncode != 0

        docker("pull", target)
        assert docker("image", "inspect", "--format", "{{.Id}}", target).stdout.strip() == image_id
        docker("rmi", target)

        docker("pull", f"{repo}@{pushed}")
        digests = docker("image", "inspect", "--format", "{{json .RepoDigests}}", image_id).stdout
        assert f"{repo}@{pushed}" in json.loads(digests)

        archive = tmp_path / "saved.tar"
        docker("save", "-o", str(archive), image_id)
        assert files_in_docker_archive(archive) == oci_image.files
    finally:
        docker("rmi", "--force", image_id, check=False)


# -- Portway-specific: several workers, restarts --------------------------------------------


def test_two_workers_serve_every_client(
    portway_factory: Callable[..., PortwayServer],
    dockerd: Dockerd,
    oci_image: OciImage,
    multiarch_image: MultiArchImage,
    tmp_path: Path,
) -> None:
    """With `workers = 2` an upload's POST, PATCH and PUT may land on different processes."""
    server = portway_factory(workers=2)
    multi = server.image("workers/multi")
    pushed, _ = push(multiarch_image.ref, f"docker://{multi}:m", tmp_path / "d1", "--all")
    assert pushed == multiarch_image.index_digest
    out = tmp_path / "multi"
    skopeo("copy", "--all", NO_TLS_SRC, f"docker://{multi}:m", f"oci:{out}:m")
    assert read_layout_manifest(out, "m")[0] == pushed

    # docker sends each layer as a streamed PATCH then a closing PUT.
    local = dockerd.load_oci(oci_image.ref, f"portway-test/workers-{server.port}:v1", tmp_path)
    image_id = dockerd.docker("image", "inspect", "--format", "{{.Id}}", local).stdout.strip()
    target = f"{server.image('workers/docker')}:v1"
    try:
        dockerd.docker("tag", local, target)
        dockerd.docker("push", target)
        dockerd.docker("rmi", local, target)
        dockerd.docker("pull", target)
        assert (
            dockerd.docker("image", "inspect", "--format", "{{.Id}}", target).stdout.strip()
            == image_id
        )
    finally:
        dockerd.docker("rmi", "--force", image_id, check=False)


def test_pushed_images_survive_restart_and_crash(
    portway_factory: Callable[..., PortwayServer],
    oci_image: OciImage,
    container_storage: ContainerStorage,
    tmp_path: Path,
) -> None:
    server = portway_factory()
    name = server.image("restart/app")
    pushed, _ = push(oci_image.ref, f"docker://{name}:v1", tmp_path / "d1", "--format", "v2s2")

    server.stop()
    server.start()
    assert sha256(raw_manifest(f"docker://{name}:v1")) == pushed

    server.kill()
    server.start()
    podman = container_storage.podman
    pulled = podman("pull", "--quiet", "--tls-verify=false", f"{name}:v1").stdout.split()[-1]
    assert "sha256:" + pulled == oci_image.image_id


def test_login_then_push_and_pull_with_security_on(
    portway_factory: Callable[..., PortwayServer],
    dockerd: Dockerd,
    oci_image: OciImage,
    container_storage: ContainerStorage,
    tmp_path: Path,
) -> None:
    """What a user of `make serve` does: log in as admin (password in the data dir), push, pull."""
    server = portway_factory(security={"enabled": True})
    password = server.admin_password()
    assert password, "security on, yet no <data>/admin.password"
    creds = f"admin:{password}"
    name = server.image("secure/app")

    anonymous = skopeo("copy", NO_TLS_DEST, oci_image.ref, f"docker://{name}:anon", check=False)
    assert anonymous.returncode != 0
    assert "unauthorized" in anonymous.output.lower() or "401" in anonymous.output

    wrong = skopeo(
        "copy",
        NO_TLS_DEST,
        "--dest-creds",
        "admin:wrong",
        oci_image.ref,
        f"docker://{name}:x",
        check=False,
    )
    assert wrong.returncode != 0

    pushed, _ = push(oci_image.ref, f"docker://{name}:v1", tmp_path / "d", "--dest-creds", creds)
    assert pushed == oci_image.manifest_digest
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", creds, f"docker://{name}:v1")
    assert sha256(raw.stdout.encode()) == pushed

    podman = container_storage.podman
    podman("login", "--tls-verify=false", "-u", "admin", "-p", password, server.host)
    pulled = podman("pull", "--quiet", "--tls-verify=false", f"{name}:v1").stdout.split()[-1]
    assert "sha256:" + pulled == oci_image.image_id

    # docker login asks for a token on the bare host, with no scope (and gets no refresh
    # token, ADR 0006), then asks for one scoped to the repository path it pulls.
    docker = dockerd.docker
    assert docker("pull", f"{name}:v1", check=False).returncode != 0
    docker("login", "-u", "admin", "--password-stdin", server.host, input=password)
    try:
        docker("pull", f"{name}:v1")
        image_id = docker("image", "inspect", "--format", "{{.Id}}", f"{name}:v1").stdout.strip()
        assert image_id == oci_image.image_id
        docker("tag", f"{name}:v1", f"{name}:docker")
        docker("push", f"{name}:docker")
    finally:
        docker("logout", server.host, check=False)
        docker("rmi", "--force", oci_image.image_id, check=False)


def test_write_policies_as_clients_see_them(
    portway_factory: Callable[..., PortwayServer],
    oci_image: OciImage,
    tmp_path: Path,
) -> None:
    """allow_once keeps tags, allow_latest lets only `latest` move, deny refuses every push."""
    server = portway_factory(
        repositories=[
            {"name": "once", "type": "hosted", "path_routing": True, "write_policy": "allow_once"},
            {
                "name": "latest-only",
                "type": "hosted",
                "path_routing": True,
                "write_policy": "allow_latest",
            },
            {"name": "frozen", "type": "hosted", "path_routing": True, "write_policy": "deny"},
        ]
    )
    other = make_oci_layout(tmp_path / "other", "v1", layers=1, layer_size=64 * 1024, seed=7)
    first, second = oci_image.ref, other.ref

    def copy(source: str, ref: str) -> CommandResult:
        return skopeo("copy", NO_TLS_DEST, source, f"docker://{ref}", check=False)

    once = server.image("app", repository="once")
    assert copy(first, f"{once}:v1").returncode == 0
    assert copy(first, f"{once}:v1").returncode == 0, "the same manifest again is no overwrite"
    refused = copy(second, f"{once}:v1")
    assert refused.returncode != 0
    assert "denied" in refused.output.lower(), refused.output
    assert sha256(raw_manifest(f"docker://{once}:v1")) == oci_image.manifest_digest
    assert copy(second, f"{once}:v2").returncode == 0

    latest = server.image("app", repository="latest-only")
    for tag in ("latest", "v1"):
        assert copy(first, f"{latest}:{tag}").returncode == 0
    assert copy(second, f"{latest}:latest").returncode == 0
    assert sha256(raw_manifest(f"docker://{latest}:latest")) == other.manifest_digest
    assert copy(second, f"{latest}:v1").returncode != 0
    assert sha256(raw_manifest(f"docker://{latest}:v1")) == oci_image.manifest_digest

    frozen = copy(first, f"{server.image('app', repository='frozen')}:v1")
    assert frozen.returncode != 0
    assert "denied" in frozen.output.lower(), frozen.output
