"""Real clients against team repositories with security on: docker, podman and skopeo log in
with the right and the wrong password, push and pull where the role allows, and pull
anonymously only where `anonymous_pull = true`.

Each team repository is reached through its own connector port (the seed's layout); alice is
in team A, bob in team B.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.dockerd import Dockerd
from support.engines import ContainerStorage, skopeo
from support.images import OciImage
from support.security import cli
from support.server import PortwayServer

NO_TLS_DEST, NO_TLS_SRC = "--dest-tls-verify=false", "--src-tls-verify=false"
REPOS = ("team-a-hosted", "public-hosted")
ALICE, BOB = ("alice", "alice-Pw-1"), ("bob", "bob-Pw-2")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (scripts/install-test-deps.sh)")
    srv = PortwayServer(
        tmp_path_factory.mktemp("security-clients"),
        repositories=[
            {"name": "team-a-hosted", "type": "hosted"},
            {"name": "team-b-hosted", "type": "hosted"},
            {"name": "public-hosted", "type": "hosted", "anonymous_pull": True},
        ],
        connectors=[{"repository": r} for r in REPOS],
        security={"enabled": True},
    )
    srv.start()
    try:
        cli(srv, "role", "add", "team-a", "--privilege", "team-a-*:browse,read,add,edit,delete")
        cli(srv, "role", "add", "publisher", "--privilege", "public-*:browse,read,add,edit")
        cli(srv, "role", "add", "team-b", "--privilege", "team-b-*:browse,read,add,edit,delete")
        cli(srv, "user", "add", ALICE[0], "--password", ALICE[1], "--role", "team-a")
        cli(srv, "user", "roles", ALICE[0], "team-a", "publisher")
        cli(srv, "user", "add", BOB[0], "--password", BOB[1], "--role", "team-b")
        yield srv
    finally:
        srv.stop()
        print(srv.log()[-3000:])


def clear_refusal(output: str) -> bool:
    """Our message, or the client's own rewording of a 401 from the token endpoint."""
    return "incorrect username or password" in output or "invalid username/password" in output


def host(server: PortwayServer, repo: str) -> str:
    return f"127.0.0.1:{server.connector_port(REPOS.index(repo))}"


@pytest.fixture(scope="module")
def published(server: PortwayServer, oci_image: OciImage) -> OciImage:
    """The test image in both repositories, pushed by alice with skopeo."""
    for repo in REPOS:
        skopeo(
            "copy",
            NO_TLS_DEST,
            "--dest-creds",
            ":".join(ALICE),
            oci_image.ref,
            f"docker://{host(server, repo)}/app:v1",
        )
    return oci_image


def test_skopeo_login_right_and_wrong(
    server: PortwayServer, published: OciImage, tmp_path: Path
) -> None:
    auth = tmp_path / "auth.json"
    team_a = host(server, "team-a-hosted")
    wrong = skopeo(
        "login", "--tls-verify=false", "--authfile", str(auth), "-u", "alice", "-p", "nope",
        team_a, check=False,
    )  # fmt: skip
    assert wrong.returncode != 0
    assert clear_refusal(wrong.output), wrong.output
    skopeo("login", "--tls-verify=false", "--authfile", str(auth), "-u", ALICE[0], "-p", ALICE[1],
           team_a)  # fmt: skip
    out = tmp_path / "pulled"
    skopeo(
        "copy", NO_TLS_SRC, "--authfile", str(auth), f"docker://{team_a}/app:v1", f"oci:{out}:v1"
    )
    assert (out / "index.json").exists()

    # bob logs in (a valid user) but team A's repository does not exist for him.
    bob_auth = tmp_path / "bob.json"
    skopeo("login", "--tls-verify=false", "--authfile", str(bob_auth), "-u", BOB[0], "-p", BOB[1],
           team_a)  # fmt: skip
    refused = skopeo(
        "copy", NO_TLS_SRC, "--authfile", str(bob_auth), f"docker://{team_a}/app:v1",
        f"oci:{tmp_path / 'bob'}:v1", check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "not found" in refused.output.lower() or "unknown" in refused.output.lower()


def test_podman_login_push_pull(
    server: PortwayServer, published: OciImage, container_storage: ContainerStorage
) -> None:
    podman = container_storage.podman
    team_a = host(server, "team-a-hosted")
    wrong = podman("login", "--tls-verify=false", "-u", ALICE[0], "-p", "nope", team_a, check=False)
    assert wrong.returncode != 0
    assert clear_refusal(wrong.output), wrong.output

    podman("login", "--tls-verify=false", "-u", ALICE[0], "-p", ALICE[1], team_a)
    pulled = podman("pull", "--quiet", "--tls-verify=false", f"{team_a}/app:v1").stdout.split()[-1]
    assert "sha256:" + pulled == published.image_id
    podman("tag", f"{team_a}/app:v1", f"{team_a}/app:podman")
    podman("push", "--tls-verify=false", f"{team_a}/app:podman")
    podman("logout", team_a)

    podman("login", "--tls-verify=false", "-u", BOB[0], "-p", BOB[1], team_a)
    denied = podman("push", "--tls-verify=false", f"{team_a}/app:podman", check=False)
    assert denied.returncode != 0
    podman("logout", team_a)


def test_docker_login_push_pull(
    server: PortwayServer, published: OciImage, dockerd: Dockerd, tmp_path: Path
) -> None:
    docker = dockerd.docker
    team_a = host(server, "team-a-hosted")
    wrong = docker("login", "-u", ALICE[0], "--password-stdin", team_a, input="nope", check=False)
    assert wrong.returncode != 0
    assert clear_refusal(wrong.output), wrong.output

    local = dockerd.load_oci(published.ref, f"portway-test/sec-{server.port}:v1", tmp_path)
    target = f"{team_a}/app:docker"
    try:
        docker("login", "-u", ALICE[0], "--password-stdin", team_a, input=ALICE[1])
        docker("tag", local, target)
        docker("push", target)
        docker("rmi", target)
        docker("pull", target)
        docker("logout", team_a)

        # bob: a valid login, but pushing to team A fails and says why.
        docker("login", "-u", BOB[0], "--password-stdin", team_a, input=BOB[1])
        denied = docker("push", target, check=False)
        assert denied.returncode != 0
        text = denied.output.lower()
        assert "not found" in text or "denied" in text or "unknown" in text, denied.output
    finally:
        docker("logout", team_a, check=False)
        docker("rmi", "--force", local, target, check=False)


def test_anonymous_pull_only_where_allowed(
    server: PortwayServer,
    published: OciImage,
    container_storage: ContainerStorage,
    dockerd: Dockerd,
    tmp_path: Path,
) -> None:
    public, team_a = host(server, "public-hosted"), host(server, "team-a-hosted")
    out = tmp_path / "anon"
    skopeo("copy", NO_TLS_SRC, f"docker://{public}/app:v1", f"oci:{out}:v1")
    refused = skopeo(
        "copy", NO_TLS_SRC, f"docker://{team_a}/app:v1", f"oci:{tmp_path / 'no'}:v1", check=False
    )
    assert refused.returncode != 0
    assert "unauthorized" in refused.output.lower() or "authentication required" in refused.output

    podman = container_storage.podman
    pulled = podman("pull", "--quiet", "--tls-verify=false", f"{public}/app:v1").stdout.split()[-1]
    assert "sha256:" + pulled == published.image_id
    assert podman("pull", "--tls-verify=false", f"{team_a}/app:v1", check=False).returncode != 0

    # Anonymous may pull, not push, even where pulling is public.
    pushed = skopeo("copy", NO_TLS_DEST, published.ref, f"docker://{public}/anon:v1", check=False)
    assert pushed.returncode != 0

    docker = dockerd.docker
    docker("logout", public, check=False)
    try:
        docker("pull", f"{public}/app:v1")
        denied = docker("pull", f"{team_a}/app:v1", check=False)
        assert denied.returncode != 0
        assert "unauthorized" in denied.output.lower() or "denied" in denied.output.lower()
    finally:
        docker("rmi", "--force", f"{public}/app:v1", check=False)
