"""Portway's OCI image (deploy/build-image.sh): its configuration, and that it serves.

The image is built with buildah from scratch (tests/support/image_build.py starts the build
in the background when collection finishes). This sandbox cannot run a container (crun may
not set resource limits here), so the image's entrypoint runs from its mounted root file
system under chroot, as the image's user: what a container runtime would start, minus the
namespaces.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from support.engines import skopeo
from support.image_build import TAG, ImageBuild, start_build
from support.images import OciImage, read_layout_manifest
from support.ports import free_port
from support.process import ManagedProcess

UID = 10001
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image() -> ImageBuild:
    build = start_build()
    build.wait()
    print(f"image built in {build.seconds:.0f}s after collection")
    return build


def image_config(image: ImageBuild) -> dict[str, Any]:
    out = image.storage.buildah("inspect", "--type", "image", TAG).stdout
    config: dict[str, Any] = json.loads(out)["OCIv1"]["config"]
    return config


def test_image_runs_as_non_root_with_a_data_volume(image: ImageBuild) -> None:
    config = image_config(image)
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == [
        "/opt/portway/bin/portway",
        "serve",
        "--config",
        "/etc/portway/portway.toml",
    ]
    assert "8081/tcp" in config["ExposedPorts"]
    assert "/var/lib/portway" in config["Volumes"]
    assert config["Labels"]["org.opencontainers.image.title"] == "Portway"


class Running:
    """A working container of the image, its root mounted, its entrypoint run by chroot."""

    def __init__(self, image: ImageBuild, tmp_path: Path) -> None:
        self.image = image
        self.ctr = image.storage.buildah("from", TAG).stdout.strip()
        self.root = Path(image.storage.buildah("mount", self.ctr).stdout.strip())
        self.port = free_port()
        # What an operator does: mount a configuration of their own over the image's.
        (self.root / "etc/portway/portway.toml").write_text(
            f'[server]\nlisten = "127.0.0.1:{self.port}"\ndata_dir = "/var/lib/portway"\n'
            "workers = 1\n"
        )
        config = image_config(image)
        env = dict(item.split("=", 1) for item in config["Env"])
        self.process = ManagedProcess(
            [
                "chroot",
                f"--userspec={config['User']}",
                str(self.root),
                "/usr/bin/env",
                "-C",
                config["WorkingDir"],
                *config["Entrypoint"],
            ],
            tmp_path / "image-serve.log",
            env=env,
        )
        self.process.start()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process.wait_until(self._answers, 120, "answer on /v2/")

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/v2/", timeout=1).status_code == 401
        except requests.RequestException:
            return False

    @property
    def password(self) -> str:
        return (self.root / "var/lib/portway/admin.password").read_text().strip()

    def close(self) -> None:
        self.process.stop()
        self.image.storage.buildah("umount", self.ctr, check=False)
        self.image.storage.buildah("rm", self.ctr, check=False)


@pytest.fixture
def running(image: ImageBuild, tmp_path: Path) -> Iterator[Running]:
    server = Running(image, tmp_path)
    yield server
    server.close()
    print(server.process.log()[-3000:])


def process_uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(field) for field in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def test_image_serves_pushes_and_pulls_as_its_user(
    running: Running, oci_image: OciImage, tmp_path: Path
) -> None:
    assert running.process.pid is not None
    assert process_uids(running.process.pid) == [UID] * 4
    data = running.root / "var/lib/portway"
    assert {path.stat().st_uid for path in data.rglob("*")} == {UID}

    creds = f"admin:{running.password}"
    dest = f"docker://127.0.0.1:{running.port}/docker-hosted/app:1"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, oci_image.ref, dest)
    out = tmp_path / "pulled"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", creds, dest, f"oci:{out}:1")
    digest, manifest = read_layout_manifest(out, "1")
    assert digest == oci_image.manifest_digest
    assert manifest["config"]["digest"] == oci_image.config_digest


def test_the_registry_hosts_its_own_image(running: Running, tmp_path: Path) -> None:
    creds = f"admin:{running.password}"
    dest = f"docker://127.0.0.1:{running.port}/docker-hosted/portway:test"
    started = time.monotonic()
    running.image.storage.buildah("push", "--tls-verify=false", "--creds", creds, TAG, dest)
    pushed_in = time.monotonic() - started
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", creds, dest).stdout
    manifest = json.loads(raw)
    out = tmp_path / "self"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", creds, dest, f"oci:{out}:test")
    _, pulled = read_layout_manifest(out, "test")
    config_blob = out / "blobs" / "sha256" / pulled["config"]["digest"].split(":", 1)[1]
    pulled_config = json.loads(config_blob.read_bytes())
    local = json.loads(running.image.storage.buildah("inspect", "--type", "image", TAG).stdout)
    # The registry holds this very image: the same file system layers (diff IDs, digests of
    # the uncompressed layers) and the same entry point and user.
    assert [layer["digest"] for layer in pulled["layers"]] == [
        layer["digest"] for layer in manifest["layers"]
    ]
    assert pulled_config["rootfs"]["diff_ids"] == local["OCIv1"]["rootfs"]["diff_ids"]
    assert pulled_config["config"]["Entrypoint"] == local["OCIv1"]["config"]["Entrypoint"]
    assert pulled_config["config"]["User"] == f"{UID}:{UID}"
    size = sum(layer["size"] for layer in manifest["layers"])
    assert size > 50 * 1024 * 1024  # Debian, Python and Portway's dependencies, compressed
    print(f"image: {size / 1e6:.0f} MB, pushed to Portway in {pushed_in:.1f}s")
