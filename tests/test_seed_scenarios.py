"""The seed's four scenarios end to end, with real clients and real reverse proxies.

The seed (docker-repository-reverse-proxy-strategies) describes one project team's layout:

    docker-group-project  (pull)  = docker-hosted-project + docker-hub
    docker-hosted-project (push)

reached by **port** (`project.example.com:8086` pushes, `:8087` pulls) or by **host name**
(`project-push.example.com` pushes, `project.example.com` pulls, both on 443), through nginx,
Apache httpd, HAProxy or Caddy configured by `portway proxy-config`, or through Portway's own
TLS connectors and host mapping with no proxy at all. `docker-hub` is a proxy repository whose
upstream is a local CNCF distribution standing in for Docker Hub.

Names resolve through `/etc/hosts` entries added for the module (tests run as root);
certificates come from `portway tls init`; Docker trusts the CA through
`/etc/docker/certs.d/<host[:port]>/ca.crt`, created and removed by each test; skopeo and podman
take `--cert-dir`. Security is on: every client logs in as admin.

The last test runs the seed's own Apache example as printed (only `locahost` corrected, the
certificate paths filled in, and the lines a self-contained httpd config needs around it) in
front of Portway listening on 8081, and pushes and pulls through it with docker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

import portway
from support import toml
from support.distribution import Distribution
from support.dockerd import Dockerd
from support.engines import ContainerStorage, skopeo
from support.hosts import etc_hosts
from support.images import OciImage
from support.ports import free_port, free_ports
from support.process import ManagedProcess, port_open
from support.server import PortwayServer

SRC = Path(portway.__file__).resolve().parent.parent
PUSH_REPO, PULL_REPO, HUB_REPO = "docker-hosted-project", "docker-group-project", "docker-hub"
SEED_REPO = "docker-repo"
PULL_HOST, PUSH_HOST = "project.example.com", "project-push.example.com"
HUB_IMAGE = "tools/hub-img"  # lives only upstream, so a pull of it proves the group's proxy
PROXIES = ("nginx", "apache", "haproxy", "caddy")
BINARY = {"nginx": "nginx", "apache": "apache2", "haproxy": "haproxy", "caddy": "caddy"}
DOCKER_CERTS = Path("/etc/docker/certs.d")
PUSH_DIGEST_RE = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: \d+")

pytestmark = pytest.mark.slow


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/install-test-deps.sh)")
    return path


def _portway_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-m", "portway", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert not check or result.returncode == 0, (
        f"portway {' '.join(args)}:\n{result.stdout}{result.stderr}"
    )
    return result


def _port_or_free(port: int) -> int:
    """`port` when it can be bound on 127.0.0.1 right now, else an ephemeral one."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def _addr(host: str, port: int) -> str:
    """How clients write a registry: no `:443` on the default HTTPS port."""
    return host if port == 443 else f"{host}:{port}"


# --- the world: names, certificates, upstream, Portway ------------------------------------


def repository_tags(
    portway: PortwayServer, password: str, repository: str, image: str
) -> list[str]:
    """Tags of an image read straight from a repository (Nexus path, main listener, as
    admin); none when the image is not there."""
    answer = requests.get(
        f"{portway.url}/repository/{repository}/v2/{image}/tags/list",
        auth=("admin", password),
        timeout=30,
    )
    if answer.status_code == 404:
        return []
    assert answer.status_code == 200, answer.text
    tags: list[str] = answer.json()["tags"]
    return sorted(tags)


@dataclass
class World:
    root: Path
    tls_dir: Path
    portway: PortwayServer
    password: str
    push_port: int  # proxy-owned connector ports (the seed's 8086 / 8087)
    pull_port: int
    https_port: int  # the host-mapping listener (443 when it is free)
    hub_digest: str

    @property
    def ca(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def creds(self) -> str:
        return f"admin:{self.password}"

    def cert_dir(self) -> Path:
        """A folder holding only ca.crt, for skopeo's and podman's --cert-dir."""
        path = self.root / "cert-dir"
        if not path.exists():
            path.mkdir()
            shutil.copy(self.ca, path / "ca.crt")
        return path

    def tags(self, repository: str, image: str) -> list[str]:
        return repository_tags(self.portway, self.password, repository, image)


def _tls_init(ca_dir: Path) -> None:
    """`portway tls init`, as an operator would run it: a CA and one certificate per name."""
    _portway_cli("tls", "init", "--host", PULL_HOST, "--host", PUSH_HOST, "--dir", str(ca_dir))


def project_repositories(upstream: str) -> list[dict[str, Any]]:
    return [
        {"name": PUSH_REPO, "type": "hosted"},
        {"name": HUB_REPO, "type": "proxy", "remote_url": upstream},
        {
            "name": PULL_REPO,
            "type": "group",
            "members": [PUSH_REPO, HUB_REPO],
            "writable_member": PUSH_REPO,
        },
        {"name": SEED_REPO, "type": "hosted"},
    ]


@pytest.fixture(scope="module")
def upstream(
    tmp_path_factory: pytest.TempPathFactory, oci_image: OciImage
) -> Iterator[tuple[Distribution, str]]:
    """CNCF distribution in Docker Hub's place, holding one image."""
    registry = Distribution(tmp_path_factory.mktemp("hub")).start()
    try:
        digestfile = registry.root / "digest"
        skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--format",
            "v2s2",
            "--digestfile",
            str(digestfile),
            oci_image.ref,
            f"docker://{registry.host}/{HUB_IMAGE}:1",
        )
        yield registry, digestfile.read_text().strip()
    finally:
        registry.stop()


_HOSTS_EDITED: list[float] = []


@pytest.fixture(scope="module")
def names() -> Iterator[None]:
    with etc_hosts(PULL_HOST, PUSH_HOST):
        _HOSTS_EDITED[:] = [time.monotonic()]
        yield
    _HOSTS_EDITED.clear()


def _resolvers_caught_up() -> None:
    """dockerd's Go resolver re-reads /etc/hosts at most every 5 s: a daemon that looked a
    name up just before the edit would not see the new names until then."""
    if _HOSTS_EDITED:
        time.sleep(max(0.0, _HOSTS_EDITED[0] + 5.5 - time.monotonic()))


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: tuple[Distribution, str],
    names: None,
) -> Iterator[World]:
    """Portway behind a proxy: main listener on 8081 when free (the seed's port), connectors
    owned by the proxy, host mappings for the two names, security on."""
    root = tmp_path_factory.mktemp("seed")
    tls_dir = root / "tls"
    _tls_init(tls_dir)
    registry, hub_digest = upstream
    push_port, pull_port = free_ports(2)
    main_port = _port_or_free(8081)
    server = PortwayServer(
        root / "portway",
        security={"enabled": True},
        repositories=project_repositories(registry.url),
        connectors=[
            {"listen": f"127.0.0.1:{push_port}", "repository": PUSH_REPO, "served_by": "proxy"},
            {"listen": f"127.0.0.1:{pull_port}", "repository": PULL_REPO, "served_by": "proxy"},
        ],
        hosts=[
            {"name": PUSH_HOST, "repository": PUSH_REPO},
            {"name": PULL_HOST, "repository": PULL_REPO},
        ],
    )
    # PortwayServer picks an ephemeral main port; the seed's proxies point at 8081.
    server.port, server.host, server.url = (
        main_port,
        f"127.0.0.1:{main_port}",
        f"http://127.0.0.1:{main_port}",
    )
    server.config_path.write_text(toml.dumps(server._config()))
    server.start()
    try:
        password = server.admin_password()
        assert password
        yield World(
            root=root,
            tls_dir=tls_dir,
            portway=server,
            password=password,
            push_port=push_port,
            pull_port=pull_port,
            https_port=_port_or_free(443),
            hub_digest=hub_digest,
        )
    finally:
        server.stop()
        print("\n----- portway log -----\n" + "\n".join(server.log().splitlines()[-80:]))


# --- running a generated proxy ------------------------------------------------------------


def _caddy_env(runtime: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(runtime),
        "XDG_DATA_HOME": str(runtime / "data"),
        "XDG_CONFIG_HOME": str(runtime / "config"),
    }


def _proxy_argv(server: str, conf: Path, runtime: Path) -> list[str]:
    binary = _binary(BINARY[server])
    return {
        "nginx": [binary, "-c", str(conf), "-e", str(runtime / "startup.log"), "-g", "daemon off;"],
        "apache": [binary, "-f", str(conf), "-DFOREGROUND"],
        "haproxy": [binary, "-db", "-f", str(conf)],
        "caddy": [binary, "run", "--config", str(conf), "--adapter", "caddyfile"],
    }[server]


@contextlib.contextmanager
def running(server: str, conf: Path, ports: list[int]) -> Iterator[ManagedProcess]:
    runtime = conf.parent
    env = _caddy_env(runtime) if server == "caddy" else None
    proc = ManagedProcess(_proxy_argv(server, conf, runtime), runtime / f"{server}.out", env=env)
    proc.start()
    try:
        proc.wait_until(lambda: all(port_open("127.0.0.1", p) for p in ports), 30, f"ports {ports}")
        yield proc
    except BaseException:
        print(f"----- {conf}\n{conf.read_text()}")
        print(f"----- {server} output\n{proc.log()[-3000:]}")
        for log in sorted(runtime.glob("*.log")):
            print(f"----- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        proc.stop()


@contextlib.contextmanager
def generated_proxy(world: World, server: str) -> Iterator[ManagedProcess]:
    """`portway proxy-config SERVER` with both certificates, started on the world's ports."""
    _binary(BINARY[server])
    runtime = world.root / f"proxy-{server}"
    shutil.rmtree(runtime, ignore_errors=True)
    runtime.mkdir()
    conf = runtime / f"{server}.conf"
    cert_args: list[str] = []
    for name in (PULL_HOST, PUSH_HOST):
        cert, key = world.tls_dir / f"{name}.crt", world.tls_dir / f"{name}.key"
        if server == "haproxy":  # HAProxy reads the key from the certificate file
            cert = key = world.tls_dir / f"{name}.pem"
        cert_args += ["--tls-cert", str(cert), "--tls-key", str(key)]
    _portway_cli(
        "proxy-config",
        server,
        "--config",
        str(world.portway.config_path),
        *cert_args,
        "--https-port",
        str(world.https_port),
        "--bind",
        "127.0.0.1",
        "--runtime-dir",
        str(runtime),
        "--caddy-offline",
        "-o",
        str(conf),
    )
    with running(server, conf, [world.push_port, world.pull_port, world.https_port]) as proc:
        yield proc


# --- Portway's own TLS: connectors and host mapping, no proxy -----------------------------


@dataclass
class Native:
    world: World
    portway: PortwayServer
    push_port: int
    pull_port: int
    https_port: int

    @property
    def password(self) -> str:
        password = self.portway.admin_password()
        assert password
        return password

    def tags(self, repository: str, image: str) -> list[str]:
        return repository_tags(self.portway, self.password, repository, image)


@pytest.fixture(scope="module")
def native(
    tmp_path_factory: pytest.TempPathFactory, world: World, upstream: tuple[Distribution, str]
) -> Iterator[Native]:
    """A second Portway serving the same layout itself: TLS connectors for the two ports, and
    one TLS listener (443 when free) holding both certificates for the two host names."""
    tls = world.tls_dir
    pair = {
        name: {"cert": str(tls / f"{name}.crt"), "key": str(tls / f"{name}.key")}
        for name in (PULL_HOST, PUSH_HOST)
    }
    push_port, pull_port = free_ports(2)
    https_port = _port_or_free(443)
    server = PortwayServer(
        tmp_path_factory.mktemp("native"),
        security={"enabled": True},
        repositories=project_repositories(upstream[0].url),
        connectors=[
            {"listen": f"127.0.0.1:{push_port}", "repository": PUSH_REPO, "tls": pair[PULL_HOST]},
            {"listen": f"127.0.0.1:{pull_port}", "repository": PULL_REPO, "tls": pair[PULL_HOST]},
            {"listen": f"127.0.0.1:{https_port}", "tls": [pair[PULL_HOST], pair[PUSH_HOST]]},
        ],
        hosts=[
            {"name": PUSH_HOST, "repository": PUSH_REPO},
            {"name": PULL_HOST, "repository": PULL_REPO},
        ],
    ).start()
    try:
        yield Native(world, server, push_port, pull_port, https_port)
    finally:
        server.stop()
        print("\n----- native portway log -----\n" + "\n".join(server.log().splitlines()[-60:]))


# --- clients ------------------------------------------------------------------------------


@contextlib.contextmanager
def docker_trusts(ca: Path, *registries: str) -> Iterator[None]:
    """`/etc/docker/certs.d/<registry>/ca.crt` for each registry, removed afterwards."""
    _resolvers_caught_up()
    made: list[Path] = [] if DOCKER_CERTS.exists() else [DOCKER_CERTS]
    try:
        for registry in registries:
            folder = DOCKER_CERTS / registry
            if folder.exists():
                continue
            folder.mkdir(parents=True)
            made.append(folder)
            shutil.copy(ca, folder / "ca.crt")
        yield
    finally:
        for folder in reversed(made):
            if folder == DOCKER_CERTS:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if nobody else put anything there meanwhile
            else:
                shutil.rmtree(folder, ignore_errors=True)


def docker_push_pull(
    dockerd: Dockerd,
    image: OciImage,
    tmp_path: Path,
    *,
    ca: Path,
    password: str,
    push_registry: str,
    pull_registry: str,
    name: str,
) -> str:
    """docker login + tag + push to `push_registry`, then login + pull from `pull_registry`
    (the pushed image and the upstream-only one). Returns the pushed manifest digest."""
    docker = dockerd.docker
    local = dockerd.load_oci(image.ref, f"seed-local/{name}:v1", tmp_path)
    pushed_ref = f"{push_registry}/{name}:v1"
    pulled_ref = f"{pull_registry}/{name}:v1"
    hub_ref = f"{pull_registry}/{HUB_IMAGE}:1"
    with docker_trusts(ca, push_registry, pull_registry):
        try:
            docker("login", "-u", "admin", "--password-stdin", push_registry, input=password)
            docker("tag", local, pushed_ref)
            out = docker("push", pushed_ref).stdout
            match = PUSH_DIGEST_RE.search(out)
            assert match, out
            if pull_registry != push_registry:
                docker("login", "-u", "admin", "--password-stdin", pull_registry, input=password)
            docker("rmi", local, pushed_ref)
            docker("pull", pulled_ref)
            got = docker("image", "inspect", "--format", "{{.Id}}", pulled_ref).stdout.strip()
            assert got == image.image_id
            docker("pull", hub_ref)
            got = docker("image", "inspect", "--format", "{{.Id}}", hub_ref).stdout.strip()
            assert got == image.image_id
            return match.group(1)
        finally:
            for registry in {push_registry, pull_registry}:
                docker("logout", registry, check=False)
            docker("rmi", "--force", image.image_id, check=False)


def skopeo_push_pull(
    image: OciImage,
    tmp_path: Path,
    *,
    cert_dir: Path,
    creds: str,
    push_registry: str,
    pull_registry: str,
    name: str,
    hub_digest: str,
) -> str:
    digestfile = tmp_path / f"{name.replace('/', '_')}.digest"
    skopeo(
        "copy",
        f"--dest-cert-dir={cert_dir}",
        "--dest-creds",
        creds,
        "--digestfile",
        str(digestfile),
        image.ref,
        f"docker://{push_registry}/{name}:v1",
    )
    digest = digestfile.read_text().strip()
    for ref, want, tag in (
        (f"{pull_registry}/{name}@{digest}", digest, "mine"),
        (f"{pull_registry}/{name}:v1", digest, "mine-tag"),
        (f"{pull_registry}/{HUB_IMAGE}:1", hub_digest, "hub"),
    ):
        out = tmp_path / f"pulled-{name.replace('/', '_')}-{tag}"
        skopeo(
            "copy",
            f"--src-cert-dir={cert_dir}",
            "--src-creds",
            creds,
            f"docker://{ref}",
            f"dir:{out}",  # keeps the manifest byte for byte
        )
        manifest = (out / "manifest.json").read_bytes()
        assert "sha256:" + hashlib.sha256(manifest).hexdigest() == want, ref
    # Unauthenticated, the same pull is refused.
    anonymous = skopeo(
        "inspect",
        f"--cert-dir={cert_dir}",
        "--no-creds",
        f"docker://{pull_registry}/{name}:v1",
        check=False,
    )
    assert anonymous.returncode != 0
    return digest


def _doctor_passes(world: World, url: str, image: str) -> None:
    """`portway doctor URL` as admin, trusting the test CA: every check passes."""
    doctor = _portway_cli(
        "doctor",
        url,
        "--image",
        image,
        "--user",
        "admin",
        "--password",
        world.password,
        "--ca",
        str(world.ca),
        check=False,
    )
    assert doctor.returncode == 0, f"{url}\n{doctor.stdout}{doctor.stderr}"


def _landed(tags: Any, name: str) -> None:
    """The push is in the hosted repository, and the group shows it."""
    assert tags(PUSH_REPO, name) == ["v1"]
    assert tags(PULL_REPO, name) == ["v1"]


# --- port mapping: docker through each proxy, and through Portway's own connectors --------


@pytest.mark.parametrize("server", PROXIES)
def test_port_mapping_docker_through_proxy(
    server: str, world: World, dockerd: Dockerd, oci_image: OciImage, tmp_path: Path
) -> None:
    """`docker login project.example.com:<push>` + push lands in docker-hosted-project; a pull
    from `project.example.com:<pull>` reads docker-group-project (hosted + docker-hub)."""
    name = f"port-{server}/app"
    with generated_proxy(world, server):
        docker_push_pull(
            dockerd,
            oci_image,
            tmp_path,
            ca=world.ca,
            password=world.password,
            push_registry=f"{PULL_HOST}:{world.push_port}",
            pull_registry=f"{PULL_HOST}:{world.pull_port}",
            name=name,
        )
    _landed(world.tags, name)
    assert world.tags(HUB_REPO, name) == []


@pytest.mark.parametrize("server", PROXIES)
def test_host_mapping_skopeo_through_proxy(
    server: str, world: World, oci_image: OciImage, tmp_path: Path
) -> None:
    """`project-push.example.com` pushes, `project.example.com` pulls, one HTTPS port, one
    certificate per name chosen by SNI."""
    name = f"host-{server}/app"
    with generated_proxy(world, server):
        skopeo_push_pull(
            oci_image,
            tmp_path,
            cert_dir=world.cert_dir(),
            creds=world.creds,
            push_registry=_addr(PUSH_HOST, world.https_port),
            pull_registry=_addr(PULL_HOST, world.https_port),
            name=name,
            hub_digest=world.hub_digest,
        )
        # And the seed's port mapping with skopeo too, on the same run of the proxy.
        skopeo_push_pull(
            oci_image,
            tmp_path,
            cert_dir=world.cert_dir(),
            creds=world.creds,
            push_registry=f"{PULL_HOST}:{world.push_port}",
            pull_registry=f"{PULL_HOST}:{world.pull_port}",
            name=f"{name}-ports",
            hub_digest=world.hub_digest,
        )
        # `portway doctor` agrees, from the outside, on the push host and the push port.
        for url in (
            f"https://{_addr(PUSH_HOST, world.https_port)}",
            f"https://{PULL_HOST}:{world.push_port}",
        ):
            _doctor_passes(world, url, f"doctor-{server}/probe")
    _landed(world.tags, name)
    _landed(world.tags, f"{name}-ports")


@pytest.mark.parametrize("server", ["nginx", "apache"])
def test_host_mapping_docker_through_proxy(
    server: str, world: World, dockerd: Dockerd, oci_image: OciImage, tmp_path: Path
) -> None:
    name = f"host-docker-{server}/app"
    with generated_proxy(world, server):
        docker_push_pull(
            dockerd,
            oci_image,
            tmp_path,
            ca=world.ca,
            password=world.password,
            push_registry=_addr(PUSH_HOST, world.https_port),
            pull_registry=_addr(PULL_HOST, world.https_port),
            name=name,
        )
    _landed(world.tags, name)


def test_podman_through_proxy(
    world: World, oci_image: OciImage, container_storage: ContainerStorage
) -> None:
    """podman: login, push by host name, pull by port, through Caddy."""
    name = "podman-caddy/app"
    podman = container_storage.podman
    cert_dir = str(world.cert_dir())
    with generated_proxy(world, "caddy"):
        _podman_round_trip(
            podman,
            oci_image,
            cert_dir,
            world.password,
            _addr(PUSH_HOST, world.https_port),
            f"{PULL_HOST}:{world.pull_port}",
            name,
        )
    _landed(world.tags, name)


def _podman_round_trip(
    podman: Any,
    image: OciImage,
    cert_dir: str,
    password: str,
    push_registry: str,
    pull_registry: str,
    name: str,
) -> None:
    local = podman("pull", "--quiet", image.ref).stdout.split()[-1]
    target = f"{push_registry}/{name}:v1"
    for registry in (push_registry, pull_registry):
        podman("login", "--cert-dir", cert_dir, "-u", "admin", "-p", password, registry)
    podman("tag", local, target)
    podman("push", "--cert-dir", cert_dir, target)
    podman("rmi", "--force", local)
    pulled = podman(
        "pull", "--quiet", "--cert-dir", cert_dir, f"{pull_registry}/{name}:v1"
    ).stdout.split()[-1]
    assert "sha256:" + pulled == image.image_id
    hub = podman(
        "pull", "--quiet", "--cert-dir", cert_dir, f"{pull_registry}/{HUB_IMAGE}:1"
    ).stdout.split()[-1]
    assert "sha256:" + hub == image.image_id


def test_native_port_and_host_mapping(
    native: Native,
    dockerd: Dockerd,
    oci_image: OciImage,
    container_storage: ContainerStorage,
    tmp_path: Path,
) -> None:
    """No proxy: Portway's TLS connectors (port mapping) and its SNI listener (host mapping),
    with docker, podman and skopeo."""
    world = native.world
    ca = world.ca
    password = native.password
    port_push = f"{PULL_HOST}:{native.push_port}"
    port_pull = f"{PULL_HOST}:{native.pull_port}"
    host_push = _addr(PUSH_HOST, native.https_port)
    host_pull = _addr(PULL_HOST, native.https_port)

    docker_push_pull(
        dockerd,
        oci_image,
        tmp_path,
        ca=ca,
        password=password,
        push_registry=port_push,
        pull_registry=port_pull,
        name="native-port/docker",
    )
    docker_push_pull(
        dockerd,
        oci_image,
        tmp_path,
        ca=ca,
        password=password,
        push_registry=host_push,
        pull_registry=host_pull,
        name="native-host/docker",
    )
    for registries, name in (
        ((port_push, port_pull), "native-port/skopeo"),
        ((host_push, host_pull), "native-host/skopeo"),
    ):
        skopeo_push_pull(
            oci_image,
            tmp_path,
            cert_dir=world.cert_dir(),
            creds=f"admin:{password}",
            push_registry=registries[0],
            pull_registry=registries[1],
            name=name,
            hub_digest=world.hub_digest,
        )
    _podman_round_trip(
        container_storage.podman,
        oci_image,
        str(world.cert_dir()),
        password,
        host_push,
        port_pull,
        "native-mixed/podman",
    )
    for name in (
        "native-port/docker",
        "native-host/docker",
        "native-port/skopeo",
        "native-host/skopeo",
        "native-mixed/podman",
    ):
        _landed(native.tags, name)


# --- the seed's own Apache configuration, as printed ---------------------------------------

SEED_APACHE = """\
Listen 8087 https

<VirtualHost *:8087>
ServerName project.example.com
ServerAdmin admin@example.com

AllowEncodedSlashes NoDecode
ProxyRequests Off
ProxyPreserveHost On

SSLEngine ON
SSLCertificateFile "/path/to/ssl/server.crt"
SSLCertificateKeyFile "/path/to/ssl/server.key"

ProxyPass / http://localhost:8081/repository/docker-repo/ nocanon
ProxyPassReverse / http://localhost:8081/repository/docker-repo/
RequestHeader set X-Forwarded-Proto "https"
</VirtualHost>
"""


def seed_apache_config(world: World, runtime: Path) -> tuple[str, int]:
    """The seed's example with the certificate paths filled in, inside the lines httpd needs
    to run from a file of its own. Its ports (8087 in front, 8081 behind) are kept when free."""
    body = SEED_APACHE.replace(
        "/path/to/ssl/server.crt", str(world.tls_dir / f"{PULL_HOST}.crt")
    ).replace("/path/to/ssl/server.key", str(world.tls_dir / f"{PULL_HOST}.key"))
    front = _port_or_free(8087)
    if front != 8087:
        body = body.replace("8087", str(front))
    if world.portway.port != 8081:
        body = body.replace("localhost:8081", f"localhost:{world.portway.port}")
    modules = "/usr/lib/apache2/modules"
    wrapper = "".join(
        f"LoadModule {name}_module {modules}/mod_{name}.so\n"
        for name in (
            "mpm_event",
            "authz_core",
            "headers",
            "proxy",
            "proxy_http",
            "socache_shmcb",
            "ssl",
        )
    )
    wrapper += (
        f'ServerRoot "{runtime}"\n'
        f'PidFile "{runtime}/httpd.pid"\n'
        f'ErrorLog "{runtime}/error.log"\n'
        f'DefaultRuntimeDir "{runtime}"\n'
        f"Mutex file:{runtime} default\n"
        "User www-data\nGroup www-data\n"
        f"SSLSessionCache shmcb:{runtime}/ssl_scache(512000)\n"
        "LogLevel warn\n"
        "\n"
    )
    return wrapper + body, front


def test_seed_apache_config_as_printed(
    world: World, dockerd: Dockerd, oci_image: OciImage, tmp_path: Path
) -> None:
    binary = _binary("apache2")
    runtime = world.root / "seed-apache"
    shutil.rmtree(runtime, ignore_errors=True)
    runtime.mkdir()
    text, front = seed_apache_config(world, runtime)
    # Everything from the seed is there, line for line.
    seed_lines = [line for line in SEED_APACHE.splitlines() if line and "/path/" not in line]
    for line in seed_lines:
        expected = line.replace("8087", str(front)).replace(
            "localhost:8081", f"localhost:{world.portway.port}"
        )
        assert expected in text.splitlines(), line
    conf = runtime / "seed-apache.conf"
    conf.write_text(text)
    check = subprocess.run(
        [binary, "-t", "-f", str(conf)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr
    name = "seed-apache/app"
    with running("apache", conf, [front]):
        docker_push_pull_plain(
            dockerd,
            oci_image,
            tmp_path,
            ca=world.ca,
            password=world.password,
            registry=f"{PULL_HOST}:{front}",
            name=name,
            cert_dir=world.cert_dir(),
        )
        _doctor_passes(world, f"https://{PULL_HOST}:{front}", "doctor-seed/probe")
    assert world.tags(SEED_REPO, name) == ["v1"]


def docker_push_pull_plain(
    dockerd: Dockerd,
    image: OciImage,
    tmp_path: Path,
    *,
    ca: Path,
    password: str,
    registry: str,
    name: str,
    cert_dir: Path,
) -> None:
    """login, push, remove, pull by tag and by digest, against one registry."""
    docker = dockerd.docker
    local = dockerd.load_oci(image.ref, f"seed-local/{name}:v1", tmp_path)
    ref = f"{registry}/{name}:v1"
    with docker_trusts(ca, registry):
        try:
            docker("login", "-u", "admin", "--password-stdin", registry, input=password)
            docker("tag", local, ref)
            out = docker("push", ref).stdout
            match = PUSH_DIGEST_RE.search(out)
            assert match, out
            docker("rmi", local, ref)
            docker("pull", ref)
            docker("pull", f"{registry}/{name}@{match.group(1)}")
            got = docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
            assert got == image.image_id
            tags = json.loads(
                skopeo(
                    "list-tags",
                    f"--cert-dir={cert_dir}",
                    "--creds",
                    f"admin:{password}",
                    f"docker://{ref.rsplit(':', 1)[0]}",
                ).stdout
            )
            assert tags["Tags"] == ["v1"]
        finally:
            docker("logout", registry, check=False)
            docker("rmi", "--force", image.image_id, check=False)
