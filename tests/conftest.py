"""Fixtures: real Portway servers, a real dockerd, CNCF distribution, test images.

`PORTWAY_TEST_REGISTRY=distribution` points the `registry` fixture (used by the client round
trips) at CNCF distribution instead of Portway, to check a test itself against a known-good
registry.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.ceph import CephRGW
from support.distribution import Distribution
from support.dockerd import Dockerd
from support.engines import ContainerStorage
from support.image_build import finish_build, start_build
from support.images import MultiArchImage, OciImage, make_multiarch_layout, make_oci_layout
from support.postgres import Postgres
from support.process import stop_all
from support.server import START_TIMEOUT, PortwayServer

PortwayFactory = Callable[..., PortwayServer]
DistributionFactory = Callable[..., Distribution]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still run by default)")


def pytest_collection_finish(session: pytest.Session) -> None:
    # Portway's OCI image takes minutes to build (a Debian download); start it now, in the
    # background, when a test of it is to run (tests/test_image.py waits for it).
    if any(item.path.name == "test_image.py" for item in session.items):
        start_build()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    finish_build()
    leftovers = stop_all()
    if leftovers:
        print(f"\nconftest: stopped processes the tests left running: {leftovers}", file=sys.stderr)


def _show_log(name: str, text: str, lines: int = 60) -> None:
    """Printed during teardown; pytest shows it only for a failed test."""
    tail = "\n".join(text.splitlines()[-lines:])
    print(f"\n----- {name} log (last {lines} lines) -----\n{tail}")


def _servers(
    root: Path,
    *,
    start_timeout: float = START_TIMEOUT,
    stop_timeout: float = 10.0,
    database_url: str | None = None,
) -> Iterator[PortwayFactory]:
    servers: list[PortwayServer] = []

    def make(**kwargs: Any) -> PortwayServer:
        if database_url is not None:
            kwargs.setdefault("database_url", database_url)
        server = PortwayServer(root / f"portway-{len(servers)}", **kwargs)
        servers.append(server)
        return server.start(start_timeout)

    yield make
    for server in servers:
        server.stop(stop_timeout)
        _show_log(f"portway {server.host}", server.log())


def _database(request: pytest.FixtureRequest, name: str) -> Iterator[str | None]:
    if getattr(request, "param", "sqlite") == "sqlite":
        yield None
        return
    cluster: Postgres = request.getfixturevalue("postgres")
    url = cluster.create_database(name)
    yield url
    cluster.drop_database(url)


@pytest.fixture
def server_database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The `[database] url` of the servers `portway_factory` starts: None (the data folder's
    SQLite), or a fresh PostgreSQL database for a test parametrized with
    `@pytest.mark.parametrize("server_database", ["postgresql"], indirect=True)`."""
    yield from _database(request, request.node.name)


@pytest.fixture(scope="module")
def module_database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The same for a module's shared server: `@pytest.fixture(scope="module",
    params=["sqlite", "postgresql"])` on the server fixture, passed on with
    `request.getfixturevalue`; see tests/test_api_tags.py."""
    yield from _database(request, request.module.__name__.rpartition(".")[2])


@pytest.fixture
def portway_factory(tmp_path: Path, server_database: str | None) -> Iterator[PortwayFactory]:
    """`portway_factory(repositories=[...], connectors=[...], hosts=[...], workers=N, ...)`
    starts a server (see `PortwayServer`); every one is stopped at teardown."""
    yield from _servers(tmp_path, database_url=server_database)


@pytest.fixture
def start_portway(tmp_path: Path) -> Iterator[PortwayFactory]:
    """Like `portway_factory`, for tests of the worker processes: a start timeout for a busy
    machine (spawned workers take their time) and a stop that lets a drain finish."""
    yield from _servers(tmp_path, start_timeout=60, stop_timeout=60)


@pytest.fixture
def portway(portway_factory: PortwayFactory) -> PortwayServer:
    """A started Portway with the default `docker-hosted` repository (path routing on)."""
    return portway_factory()


@pytest.fixture
def distribution_factory(tmp_path: Path) -> Iterator[DistributionFactory]:
    """`distribution_factory(htpasswd=None | (user, pw), extra_config=None | dict)`."""
    registries: list[Distribution] = []

    def make(**kwargs: Any) -> Distribution:
        registry = Distribution(tmp_path / f"distribution-{len(registries)}", **kwargs)
        registries.append(registry)
        return registry.start()

    yield make
    for registry in registries:
        registry.stop()
        _show_log(f"distribution {registry.host}", registry.access_log(), lines=30)


@pytest.fixture
def registry(
    request: pytest.FixtureRequest,
    server_database: str | None,
) -> PortwayServer | Distribution:
    """The registry the client round trips talk to: Portway unless PORTWAY_TEST_REGISTRY says
    `distribution` (`server_database`: see that fixture)."""
    target = os.environ.get("PORTWAY_TEST_REGISTRY", "portway")
    if target == "distribution":
        factory: DistributionFactory = request.getfixturevalue("distribution_factory")
        return factory()
    if target != "portway":
        raise pytest.UsageError(f"PORTWAY_TEST_REGISTRY={target!r}: use portway or distribution")
    server: PortwayServer = request.getfixturevalue("portway")
    return server


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    daemon = Dockerd(tmp_path_factory.mktemp("dockerd")).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def container_storage(tmp_path: Path) -> Iterator[ContainerStorage]:
    """Private podman/buildah storage for one test."""
    storage = ContainerStorage(tmp_path / "containers")
    yield storage
    storage.cleanup()


@pytest.fixture(scope="session")
def oci_image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    """A 3-layer single-platform OCI layout (gzipped layers of 256 KiB), built once."""
    return make_oci_layout(
        tmp_path_factory.mktemp("oci-image"), "v1", layers=3, layer_size=256 * 1024, seed=1
    )


@pytest.fixture(scope="session")
def multiarch_image(tmp_path_factory: pytest.TempPathFactory) -> MultiArchImage:
    """An OCI image index over linux/amd64 and linux/arm64, 2 layers each, built once."""
    return make_multiarch_layout(
        tmp_path_factory.mktemp("multiarch-image"), "multi", layers=2, layer_size=128 * 1024, seed=2
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL 15 cluster for the whole session (started on first use, ~1-10 s)."""
    cluster = Postgres().start()
    yield cluster
    log = cluster.log()
    cluster.stop()
    _show_log("postgres", log, lines=30)


@pytest.fixture(scope="module")
def postgres_url(postgres: Postgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for one test module: `postgresql://postgres@127.0.0.1:P/NAME`."""
    url = postgres.create_database(request.module.__name__.rpartition(".")[2])
    yield url
    postgres.drop_database(url)


@pytest.fixture(scope="session")
def ceph_rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephRGW]:
    """A one-host Ceph cluster with radosgw (S3) for the whole session (started on first use,
    ~11 s); `make_bucket(name)` gives each user of it a bucket of its own."""
    rgw = CephRGW(tmp_path_factory.mktemp("ceph")).start()
    yield rgw
    rgw.stop()
    _show_log("ceph", rgw.log(lines=20), lines=80)
