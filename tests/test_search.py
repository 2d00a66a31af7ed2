"""Docker's v1 search (`/v1/search`, `/v1/_ping`) on hosted, group and proxy repositories, over
raw HTTP and with `docker search` against a real dockerd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from conftest import PortwayFactory
from proxy_support import group, hosted, oci_error, proxy
from push_support import Registry, push_config_only
from support.distribution import Distribution
from support.dockerd import Dockerd
from support.server import PortwayServer
from upstream_support import Pusher

RESULT_KEYS = {"name", "description", "star_count", "is_official", "is_automated"}


def search(server: PortwayServer, repository: str | None, **params: Any) -> requests.Response:
    base = server.repository_url(repository) if repository else server.url
    return requests.get(f"{base}/v1/search", params=params, timeout=10)


def names(doc: dict[str, Any]) -> list[str]:
    return [r["name"] for r in doc["results"]]


def _fill(server: PortwayServer, repository: str, images: list[str]) -> None:
    pusher = Pusher(server.repository_url(repository))
    for i, image in enumerate(images):
        pusher.push_image(image, "v1", seed=i)


def test_search_on_a_hosted_repository(portway_factory: PortwayFactory) -> None:
    server = portway_factory(repositories=[hosted("h")])
    _fill(server, "h", ["team/app", "team/api", "other/tool", "teamless"])
    resp = search(server, "h", q="team/")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    doc = resp.json()
    assert doc["query"] == "team/"
    assert doc["num_results"] == 2 and doc["num_pages"] == 1 and doc["page"] == 1
    assert doc["page_size"] == 25
    assert sorted(names(doc)) == ["team/api", "team/app"]
    for entry in doc["results"]:
        assert set(entry) >= RESULT_KEYS
        assert isinstance(entry["description"], str)

    # pages of one result each
    first = search(server, "h", q="team", n=1, page=1).json()
    second = search(server, "h", q="team", n=1, page=3).json()
    assert first["num_results"] == 3 and first["num_pages"] == 3 and first["page_size"] == 1
    assert len(first["results"]) == 1 and second["page"] == 3 and len(second["results"]) == 1
    assert names(first) != names(second)
    everything = search(server, "h", q="").json()
    assert everything["num_results"] == 4
    assert search(server, "h", q="TEAM/APP").json()["num_results"] == 1
    assert search(server, "h", q="nothing-like-it").json()["results"] == []

    bad = search(server, "h", q="team", n="many")
    assert bad.status_code == 400 and oci_error(bad)[0] == "PAGINATION_NUMBER_INVALID"


def test_search_on_a_group_merges_members_once(portway_factory: PortwayFactory) -> None:
    server = portway_factory(
        repositories=[
            hosted("h1"),
            hosted("h2"),
            hosted("quiet", v1_enabled=False),
            group("g", ["h1", "h2", "quiet"]),
        ]
    )
    _fill(server, "h1", ["team/app", "team/web"])
    _fill(server, "h2", ["team/app", "team/db"])
    _fill(server, "quiet", ["team/secret"])
    doc = search(server, "g", q="team").json()
    assert sorted(names(doc)) == ["team/app", "team/db", "team/web"]
    assert doc["num_results"] == 3
    paged = search(server, "g", q="team", n=2, page=2).json()
    assert paged["num_pages"] == 2 and len(paged["results"]) == 1


def test_v1_enabled_false_turns_search_off(portway_factory: PortwayFactory) -> None:
    server = portway_factory(repositories=[hosted("off", v1_enabled=False), hosted("on")])
    _fill(server, "off", ["team/app"])
    resp = search(server, "off", q="team")
    assert resp.status_code == 404
    code, message = oci_error(resp)
    assert code == "UNSUPPORTED" and "off" in message
    assert search(server, "on", q="team").status_code == 200


def test_ping_answers(portway_factory: PortwayFactory) -> None:
    server = portway_factory(repositories=[hosted("h")])
    for url in (f"{server.url}/v1/_ping", f"{server.repository_url('h')}/v1/_ping"):
        resp = requests.get(url, timeout=10)
        assert resp.status_code == 200 and resp.json() is True
    other = requests.get(f"{server.repository_url('h')}/v1/images", timeout=10)
    assert other.status_code == 404


def test_shared_host_searches_every_path_routed_repository(
    portway_factory: PortwayFactory,
) -> None:
    server = portway_factory(
        repositories=[hosted("a"), hosted("b"), hosted("hidden", path_routing=False)]
    )
    _fill(server, "a", ["team/app"])
    _fill(server, "b", ["team/app", "team/db"])
    _fill(server, "hidden", ["team/zzz"])
    doc = search(server, None, q="team").json()
    assert sorted(names(doc)) == ["a/team/app", "b/team/app", "b/team/db"]


def test_proxy_forwards_search_to_an_upstream_that_has_it(
    portway_factory: PortwayFactory,
) -> None:
    origin = portway_factory(repositories=[hosted("h")])
    _fill(origin, "h", ["team/app", "team/db"])
    server = portway_factory(repositories=[proxy("mirror", origin.repository_url("h"))])
    doc = search(server, "mirror", q="team").json()
    assert sorted(names(doc)) == ["team/app", "team/db"]


def test_proxy_of_an_upstream_without_search_answers_empty(
    portway_factory: PortwayFactory, tmp_path: Path
) -> None:
    registry = Distribution(tmp_path / "upstream").start()
    try:
        Pusher(registry.url).push_image("team/app", "v1")
        server = portway_factory(repositories=[proxy("hub", registry.url)])
        resp = search(server, "hub", q="team")
        assert resp.status_code == 200
        assert resp.json()["results"] == [] and resp.json()["num_results"] == 0
    finally:
        registry.stop()


def test_docker_search(portway_factory: PortwayFactory, dockerd: Dockerd) -> None:
    server = portway_factory(
        repositories=[hosted("h"), group("g", ["h"])],
        connectors=[{"repository": "g"}],
    )
    _fill(server, "h", ["team/app", "team/db", "other/tool"])
    out = dockerd.docker("search", "--format", "{{.Name}}", f"{server.host}/team")
    # the shared host searches every path-routed repository, the group included
    assert sorted(out.stdout.split()) == ["g/team/app", "g/team/db", "h/team/app", "h/team/db"]
    port = server.connector_port(0)
    out = dockerd.docker("search", "--format", "{{.Name}}", f"127.0.0.1:{port}/team/d")
    assert out.stdout.split() == ["team/db"]


def test_search_matches_descriptions(portway_factory: PortwayFactory) -> None:
    """The image description annotation is searched and shown, as docker search expects."""
    server = portway_factory()
    description = {"org.opencontainers.image.description": "JSON processor"}
    push_config_only(Registry(server.repository_url()), "tools/jq", "1", description)
    found = requests.get(
        f"{server.url}/repository/docker-hosted/v1/search", params={"q": "processor"}, timeout=10
    ).json()
    assert [(e["name"], e["description"]) for e in found["results"]] == [
        ("tools/jq", "JSON processor")
    ]


def test_docker_search_matches_the_displayed_name(
    portway_factory: PortwayFactory, dockerd: Dockerd
) -> None:
    """On a shared host docker shows `<repository>/<image>`: a term naming the repository (or
    any part of the whole name) finds what docker would show for it."""
    server = portway_factory(
        repositories=[hosted("docker-hosted"), group("docker-group", ["docker-hosted"])]
    )
    _fill(server, "docker-hosted", ["alpine", "team/db"])

    def shown(term: str) -> list[str]:
        out = dockerd.docker("search", "--format", "{{.Name}}", f"{server.host}/{term}")
        return sorted(out.stdout.split())

    assert shown("docker-hosted/alpine") == ["docker-hosted/alpine"]
    assert shown("docker-hosted") == ["docker-hosted/alpine", "docker-hosted/team/db"]
    assert shown("hosted/team") == ["docker-hosted/team/db"]
    assert shown("alpine") == ["docker-group/alpine", "docker-hosted/alpine"]
    assert shown("docker-group/team/db") == ["docker-group/team/db"]
    assert shown("group/alpine") == ["docker-group/alpine"]
    assert shown("hosted/nothing") == []
