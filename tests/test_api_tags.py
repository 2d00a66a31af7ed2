"""Tags list and catalog, with `n` / `last` pagination and `Link: <...>; rel="next"`."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from api_support import Api, assert_error, running_server, unique
from support.server import PortwayServer

LINK_RE = re.compile(r'^<([^>]+)>;\s*rel="next"$')
# Every test twice: on the embedded SQLite and on a server whose [database] is PostgreSQL.
pytestmark = pytest.mark.parametrize("module_database", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_database: str | None
) -> Iterator[PortwayServer]:
    repositories = [
        {"name": "docker-hosted", "type": "hosted", "path_routing": True},
        {"name": "docker-other", "type": "hosted", "path_routing": True},
        {"name": "docker-hidden", "type": "hosted"},
    ]
    with running_server(
        tmp_path_factory, "api-tags", repositories=repositories, database_url=module_database
    ) as s:
        yield s


@pytest.fixture(params=["nexus", "path"])
def api(server: PortwayServer, request: pytest.FixtureRequest) -> Api:
    return Api(server, layout=request.param)


def next_link(r: requests.Response) -> str | None:
    value = r.headers.get("Link")
    if value is None:
        return None
    m = LINK_RE.match(value)
    assert m, value
    return m.group(1)


TAGS = ["1.0", "1.10", "1.2", "a", "b_c", "latest", "v1", "v10", "v9"]  # ASCII order


@pytest.fixture(scope="module")
def tagged_images(server: PortwayServer) -> dict[str, str]:
    """One image tagged with TAGS, per path layout (read-only, shared by the module)."""
    images = {}
    for layout in ("nexus", "path"):
        api = Api(server, layout=layout)
        image = unique("tagged")
        _digest, body = api.push_image(image, None)
        for tag in reversed(TAGS):
            assert api.put_manifest(image, tag, body).status_code == 201
        images[layout] = image
    return images


@pytest.fixture
def tagged(api: Api, tagged_images: dict[str, str]) -> str:
    return tagged_images[api.layout]


def test_list_all(api: Api, tagged: str) -> None:
    r = api.get(tagged, "tags/list")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"name": api.name_prefix + tagged, "tags": TAGS}
    assert "Link" not in r.headers


def test_paginate_by_following_link(api: Api, tagged: str) -> None:
    seen: list[str] = []
    url: str | None = api.path(tagged, "tags/list") + "?n=4"
    pages = 0
    while url is not None:
        # the link is relative and keeps the client's own path layout
        assert url.startswith(api.path(tagged, "tags/list?")), url
        r = api.http.get(api.server.url + url, timeout=30)
        assert r.status_code == 200
        page = r.json()["tags"]
        assert 0 < len(page) <= 4
        seen += page
        pages += 1
        url = next_link(r)
    assert seen == TAGS
    assert pages == 3


def test_exact_last_page_has_no_link(api: Api, tagged: str) -> None:
    r = api.get(tagged, "tags/list", params={"n": len(TAGS)})
    assert r.json()["tags"] == TAGS
    assert "Link" not in r.headers


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"last": "1.2"}, TAGS[3:]),
        ({"last": "latest", "n": 2}, ["v1", "v10"]),
        ({"last": "b"}, TAGS[4:]),  # `last` need not be a tag
        ({"last": "zzz"}, []),
        ({"n": 1}, ["1.0"]),
        ({"n": 0}, []),
        ({"n": 1000}, TAGS),
        ({"n": ""}, TAGS),
    ],
)
def test_n_and_last(api: Api, tagged: str, params: dict[str, object], expected: list[str]) -> None:
    r = api.get(tagged, "tags/list", params=params)
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == expected


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "99999999999999999999"])
def test_bad_n(api: Api, tagged: str, n: str) -> None:
    assert_error(api.get(tagged, "tags/list", params={"n": n}), 400, "PAGINATION_NUMBER_INVALID")


def test_unknown_image(api: Api) -> None:
    assert_error(api.get(unique("none"), "tags/list"), 404, "NAME_UNKNOWN")


def test_image_with_only_untagged_manifests(api: Api) -> None:
    image = unique("untagged")
    api.push_image(image, None)
    r = api.get(image, "tags/list")
    assert r.status_code == 200
    assert r.json()["tags"] == []


def test_nested_image_names(api: Api) -> None:
    image = f"{unique('team')}/app/tags/list"  # a name may end like an endpoint
    api.push_image(image, "v1")
    r = api.get(image, "tags/list")
    assert r.json() == {"name": api.name_prefix + image, "tags": ["v1"]}


# -- catalog -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalog_server(
    tmp_path_factory: pytest.TempPathFactory, module_database: str | None
) -> Iterator[PortwayServer]:
    repositories = [
        {"name": "alpha", "type": "hosted", "path_routing": True},
        {"name": "beta", "type": "hosted", "path_routing": True},
        {"name": "gamma", "type": "hosted"},  # no path routing: not on the shared host
    ]
    with running_server(
        tmp_path_factory, "api-catalog", repositories=repositories, database_url=module_database
    ) as s:
        for repo, images in (("alpha", ["a1", "a2", "z/deep"]), ("beta", ["b1"]), ("gamma", ["g"])):
            api = Api(s, repo)
            for image in images:
                api.push_image(image, "v1")
        yield s


def walk(server: PortwayServer, start: str) -> tuple[list[str], int]:
    names: list[str] = []
    url: str | None = start
    pages = 0
    while url is not None:
        r = requests.get(server.url + url, timeout=30)
        assert r.status_code == 200, r.text
        names += r.json()["repositories"]
        pages += 1
        link = r.headers.get("Link")
        url = None
        if link is not None:
            m = LINK_RE.match(link)
            assert m, link
            url = m.group(1)
            assert url.startswith(start.split("?")[0] + "?"), url
    return names, pages


def test_catalog_of_one_repository(catalog_server: PortwayServer) -> None:
    r = requests.get(f"{catalog_server.url}/repository/alpha/v2/_catalog", timeout=30)
    assert r.status_code == 200
    assert r.json() == {"repositories": ["a1", "a2", "z/deep"]}
    names, pages = walk(catalog_server, "/repository/alpha/v2/_catalog?n=2")
    assert names == ["a1", "a2", "z/deep"] and pages == 2
    r = requests.get(f"{catalog_server.url}/repository/gamma/v2/_catalog", timeout=30)
    assert r.json() == {"repositories": ["g"]}


def test_catalog_on_the_shared_host(catalog_server: PortwayServer) -> None:
    everything = ["alpha/a1", "alpha/a2", "alpha/z/deep", "beta/b1"]
    r = requests.get(f"{catalog_server.url}/v2/_catalog", timeout=30)
    assert r.json() == {"repositories": everything}
    for n in (1, 2, 3):
        names, pages = walk(catalog_server, f"/v2/_catalog?n={n}")
        assert names == everything
        assert pages == -(-len(everything) // n)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("last=alpha/a2", ["alpha/z/deep", "beta/b1"]),
        ("last=alpha/z/deep&n=5", ["beta/b1"]),
        ("last=beta/b1", []),
        ("n=0", []),
    ],
)
def test_catalog_last(catalog_server: PortwayServer, query: str, expected: list[str]) -> None:
    r = requests.get(f"{catalog_server.url}/v2/_catalog?{query}", timeout=30)
    assert r.status_code == 200
    assert r.json()["repositories"] == expected


def test_catalog_bad_n(catalog_server: PortwayServer) -> None:
    r = requests.get(f"{catalog_server.url}/v2/_catalog?n=x", timeout=30)
    assert_error(r, 400, "PAGINATION_NUMBER_INVALID")
