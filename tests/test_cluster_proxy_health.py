"""Proxy repositories' upstream health shared by two nodes on one PostgreSQL database: a
breaker one node opened blocks the upstream on the other node too, and an upstream 404 one
node remembered is answered from the negative cache on the other without asking upstream."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from portway.maintenance.proxy_state import INTERVAL
from proxy_support import get_manifest, manifest_requests, oci_error, proxy
from support.distribution import Distribution
from support.ports import free_port
from support.postgres import Postgres
from support.server import PortwayServer
from upstream_support import Pusher

SHARED_WITHIN = 8.0  # seconds: the proxy state loop looks every 2 s on each node


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    registry = Distribution(tmp_path_factory.mktemp("upstream")).start()
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def nodes(
    postgres: Postgres, tmp_path_factory: pytest.TempPathFactory, upstream: Distribution
) -> Iterator[list[PortwayServer]]:
    url = postgres.create_database("proxy_health")
    root = tmp_path_factory.mktemp("health")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    repositories = [proxy("hub", upstream.url), proxy("dead", dead)]
    started = [
        PortwayServer(root / f"node{i}", repositories=repositories, database_url=url)
        for i in (1, 2)
    ]
    try:
        for node in started:
            node.start(60)
        yield started
    finally:
        for node in started:
            node.stop()
        postgres.drop_database(url)


def until(check: object, timeout: float = SHARED_WITHIN) -> float:
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - start < timeout, "not shared in time"
        time.sleep(0.1)
    return time.monotonic() - start


def test_a_breaker_opened_on_one_node_blocks_the_upstream_on_the_other(
    nodes: list[PortwayServer],
) -> None:
    first, second = nodes
    for _ in range(6):  # repeated failures on the first node open its breaker
        get_manifest(first, "dead", "team/app", "v1")
    assert (
        "blocked (not contacted until"
        in oci_error(get_manifest(first, "dead", "team/app", "v1"))[1]
    )
    until(
        lambda: "blocked (not contacted" in oci_error(get_manifest(second, "dead", "x/y", "v1"))[1]
    )


def test_an_upstream_404_remembered_on_one_node_is_answered_on_the_other(
    nodes: list[PortwayServer], upstream: Distribution
) -> None:
    first, second = nodes
    image = f"team/late-{time.time_ns()}"
    assert get_manifest(first, "hub", image, "v1").status_code == 404  # asked upstream: none
    asked = manifest_requests(upstream.access_log(), image)
    Pusher(upstream.url).push_image(image, "v1")  # the image appears upstream afterwards
    pushed = manifest_requests(upstream.access_log(), image)

    until(lambda: shared_negative(database_url(first), image))  # the first node published it
    time.sleep(INTERVAL + 1)  # and the second merged it at its next look
    answer = get_manifest(second, "hub", image, "v1")
    assert answer.status_code == 404 and "cached answer" in oci_error(answer)[1], answer.text
    assert asked >= 1 and manifest_requests(upstream.access_log(), image) == pushed


def database_url(node: PortwayServer) -> str:
    assert node.database_url
    return node.database_url


def shared_negative(url: str, image: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM proxy_negative WHERE image = %s", (image,))
        found = row.fetchone()
    return bool(found and found[0])
