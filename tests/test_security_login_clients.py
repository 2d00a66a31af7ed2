"""docker and podman logged in to the same registry on one machine, in both orders.

podman reads docker's `config.json` too (after its own auth file); when that file held an
identity token for the registry (a refresh token handed to `docker login`), `podman login`
refused with "currently logged in, auth file contains an Identity token". Here podman runs
with its default auth file (in a private runtime directory) and docker's client configuration
as its `~/.docker`, as on a user's machine.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.dockerd import Dockerd
from support.engines import ContainerStorage, skopeo
from support.images import OciImage
from support.security import cli
from support.server import PortwayServer

ALICE = ("alice", "alice-Both-Clients-1")

pytestmark = pytest.mark.slow


class SharedConfigPodman(ContainerStorage):
    """podman as a user runs it: default auth file, and docker's config beside it."""

    def __init__(self, tmp_path: Path, docker_config: Path) -> None:
        super().__init__(tmp_path)
        self.runtime_dir = tmp_path / "xdg-run"
        self.runtime_dir.mkdir(mode=0o700)
        self.home = tmp_path / "home"
        self.home.mkdir()
        (self.home / ".docker").symlink_to(docker_config)
        self.docker_config = docker_config

    @property
    def own_auth_file(self) -> Path:
        return self.runtime_dir / "containers" / "auth.json"

    def env(self) -> dict[str, str]:
        env = super().env()
        del env["REGISTRY_AUTH_FILE"]
        # Not DOCKER_CONFIG: podman would take docker's file for its own auth file then.
        env.pop("DOCKER_CONFIG", None)
        env.update(
            HOME=str(self.home),
            XDG_RUNTIME_DIR=str(self.runtime_dir),
            XDG_CONFIG_HOME=str(self.home / ".config"),
        )
        return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    srv = PortwayServer(
        tmp_path_factory.mktemp("login-clients"),
        repositories=[{"name": "team-hosted", "type": "hosted"}],
        connectors=[{"repository": "team-hosted"}],
        security={"enabled": True},
    )
    srv.start()
    try:
        cli(srv, "role", "add", "team", "--privilege", "team-*:browse,read,add,edit,delete")
        cli(srv, "user", "add", ALICE[0], "--password", ALICE[1], "--role", "team")
        yield srv
    finally:
        srv.stop()
        print(srv.log()[-3000:])


@pytest.fixture
def podman(tmp_path: Path, dockerd: Dockerd) -> Iterator[SharedConfigPodman]:
    storage = SharedConfigPodman(tmp_path / "podman", dockerd.config_dir)
    yield storage
    storage.cleanup()


@pytest.fixture
def registry(server: PortwayServer, dockerd: Dockerd, podman: SharedConfigPodman) -> Iterator[str]:
    """The registry's address; both clients logged out before and after."""
    host = f"127.0.0.1:{server.connector_port(0)}"
    dockerd.docker("logout", host, check=False)
    yield host
    podman.podman("logout", "--all", check=False)
    dockerd.docker("logout", host, check=False)


@pytest.fixture(scope="module")
def published(server: PortwayServer, oci_image: OciImage) -> OciImage:
    host = f"127.0.0.1:{server.connector_port(0)}"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", ":".join(ALICE), oci_image.ref,
           f"docker://{host}/app:v1")  # fmt: skip
    return oci_image


def docker_entry(dockerd: Dockerd, host: str) -> dict[str, str]:
    config = json.loads((dockerd.config_dir / "config.json").read_text())
    entry: dict[str, str] = config.get("auths", {}).get(host, {})
    return entry


def docker_login(dockerd: Dockerd, host: str) -> None:
    dockerd.docker("login", "-u", ALICE[0], "--password-stdin", host, input=ALICE[1])
    assert docker_entry(dockerd, host).get("auth")


def podman_login(podman: SharedConfigPodman, host: str) -> None:
    done = podman.podman("login", "--tls-verify=false", "-u", ALICE[0], "-p", ALICE[1], host,
                         check=False)  # fmt: skip
    assert done.returncode == 0, done.output
    assert host in json.loads(podman.own_auth_file.read_text())["auths"]


def both_push_and_pull(
    dockerd: Dockerd, podman: SharedConfigPodman, host: str, published: OciImage, tag: str
) -> None:
    docker = dockerd.docker
    docker("pull", f"{host}/app:v1")
    docker("tag", f"{host}/app:v1", f"{host}/app:docker-{tag}")
    try:
        docker("push", f"{host}/app:docker-{tag}")
        pulled = podman.podman("pull", "--quiet", "--tls-verify=false",
                               f"{host}/app:docker-{tag}").stdout.split()[-1]  # fmt: skip
        assert "sha256:" + pulled == published.image_id
        podman.podman("tag", f"{host}/app:docker-{tag}", f"{host}/app:podman-{tag}")
        podman.podman("push", "--tls-verify=false", f"{host}/app:podman-{tag}")
        docker("pull", f"{host}/app:podman-{tag}")
        image_id = docker("image", "inspect", "--format", "{{.Id}}", f"{host}/app:podman-{tag}")
        assert image_id.stdout.strip() == published.image_id
    finally:
        docker("rmi", "--force", published.image_id, check=False)


def test_docker_login_then_podman_login(
    dockerd: Dockerd,
    podman: SharedConfigPodman,
    registry: str,
    published: OciImage,
) -> None:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (scripts/install-test-deps.sh)")
    docker_login(dockerd, registry)
    podman_login(podman, registry)
    both_push_and_pull(dockerd, podman, registry, published, "d1")
    podman_login(podman, registry)  # and again, both logged in
    docker_login(dockerd, registry)
    # docker keeps the credentials as for Nexus or Harbor, not an identity token (ADR 0006)
    assert "identitytoken" not in docker_entry(dockerd, registry)


def test_podman_login_then_docker_login(
    dockerd: Dockerd,
    podman: SharedConfigPodman,
    registry: str,
    published: OciImage,
) -> None:
    podman_login(podman, registry)
    docker_login(dockerd, registry)
    both_push_and_pull(dockerd, podman, registry, published, "p1")
    # podman logged out, docker still in: podman logs in again over docker's entry.
    podman.podman("logout", registry)
    assert os.path.exists(dockerd.config_dir / "config.json")
    podman_login(podman, registry)
