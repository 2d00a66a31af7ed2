"""Group repositories: resolution order, hosted content over proxies (dependency confusion), a
dead proxy member, push through the writable member, merged tag pagination. Members are real
Portway repositories; the proxy members' upstream is CNCF distribution."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import PortwayFactory
from portway.repos.group import resolution_order
from proxy_support import (
    get_blob,
    get_manifest,
    group,
    hosted,
    layout_blobs,
    manifest_requests,
    oci_error,
    proxy,
    v2,
    wait_for,
)
from support.distribution import Distribution
from support.dockerd import Dockerd
from support.engines import ContainerStorage, skopeo
from support.images import OciImage, make_oci_layout
from support.ports import free_port
from support.server import PortwayServer
from upstream_support import PushedImage, Pusher

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")


# -- resolution_order on its own --------------------------------------------------------------


def test_resolution_order_flattens_in_declared_order_each_once() -> None:
    members = {"g": ["h1", "inner", "p"], "inner": ["h2", "h1", "p2"]}
    assert resolution_order("g", members) == ["h1", "h2", "p2", "p"]
    assert resolution_order("leaf", members) == ["leaf"]


def test_resolution_order_refuses_cycles() -> None:
    with pytest.raises(ValueError, match="g -> a -> g"):
        resolution_order("g", {"g": ["h", "a"], "a": ["g"]})


def test_group_cycle_refused_at_start(tmp_path: Path) -> None:
    server = PortwayServer(
        tmp_path,
        repositories=[hosted("h"), group("a", ["h", "b"]), group("b", ["a"])],
    )
    with pytest.raises(Exception, match="cycle"):
        server.start(timeout=10)
    server.stop()


# -- an upstream for the proxy members --------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(
    tmp_path_factory: pytest.TempPathFactory, oci_image: OciImage
) -> Iterator[Distribution]:
    registry = Distribution(tmp_path_factory.mktemp("upstream")).start()
    skopeo("copy", "--quiet", *NO_TLS, oci_image.ref, f"docker://{registry.host}/library/real:1")
    pusher = Pusher(registry.url)
    pusher.push_image("team/app", "v1", seed=100)  # same name as the hosted image, other bytes
    pusher.push_image("team/app", "upstream-only", seed=101)
    pusher.push_image("library/base", "1", layer_sizes=(200_000, 3000), seed=102)
    yield registry
    registry.stop()


def _pusher(server: PortwayServer, repository: str) -> Pusher:
    return Pusher(server.repository_url(repository))


def digest_of(server: PortwayServer, repository: str, image: str, ref: str) -> str | None:
    resp = get_manifest(server, repository, image, ref)
    return resp.headers["Docker-Content-Digest"] if resp.status_code == 200 else None


def test_same_tag_in_two_hosted_members_first_wins(portway_factory: PortwayFactory) -> None:
    server = portway_factory(
        repositories=[
            hosted("h1"),
            hosted("h2"),
            group("g", ["h1", "h2"]),
            group("r", ["h2", "h1"]),
            group("outer", ["r", "g"]),
        ]
    )
    one = _pusher(server, "h1").push_image("team/app", "v1", seed=1)
    two = _pusher(server, "h2").push_image("team/app", "v1", seed=2)
    only_two = _pusher(server, "h2").push_image("team/app", "v2", seed=3)
    assert digest_of(server, "g", "team/app", "v1") == one.digest
    assert digest_of(server, "r", "team/app", "v1") == two.digest
    # a group member is flattened in place: outer = r, g = h2, h1
    assert digest_of(server, "outer", "team/app", "v1") == two.digest
    assert digest_of(server, "g", "team/app", "v2") == only_two.digest
    # blobs and manifests by digest resolve in any member
    assert digest_of(server, "g", "team/app", two.digest) == two.digest
    layer = only_two.layers[0]
    assert get_blob(server, "g", "team/app", layer).content == only_two.blobs[layer]
    missing = get_manifest(server, "g", "team/app", "nope")
    assert missing.status_code == 404 and oci_error(missing)[0] == "MANIFEST_UNKNOWN"


def test_hosted_image_is_not_fetched_from_a_proxy_member(
    upstream: Distribution, portway_factory: PortwayFactory
) -> None:
    server = portway_factory(
        repositories=[
            hosted("h"),
            proxy("hub", upstream.url),
            group("g", ["h", "hub"]),
            group("shadow", ["h", "hub"], allow_proxy_shadowing=True),
        ]
    )
    mine = _pusher(server, "h").push_image("team/app", "v1", seed=1)
    before = manifest_requests(upstream.access_log(), "team/app")
    assert digest_of(server, "g", "team/app", "v1") == mine.digest
    # a tag only the upstream has is not looked up there: the name belongs to the hosted member
    resp = get_manifest(server, "g", "team/app", "upstream-only")
    assert resp.status_code == 404
    tags = requests.get(v2(server, "g", "team/app/tags/list"), timeout=10).json()["tags"]
    assert tags == ["v1"]
    assert manifest_requests(upstream.access_log(), "team/app") == before
    # names the hosted members do not hold still come through the proxy
    assert digest_of(server, "g", "library/base", "1") is not None

    # with shadowing allowed, the hosted tag still wins, the upstream fills the gaps
    assert digest_of(server, "shadow", "team/app", "v1") == mine.digest
    assert digest_of(server, "shadow", "team/app", "upstream-only") is not None
    assert manifest_requests(upstream.access_log(), "team/app") > before


def test_dead_proxy_member_does_not_hide_hosted_content(
    portway_factory: PortwayFactory, oci_image: OciImage, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = portway_factory(
        repositories=[
            hosted("h"),
            proxy("hub", dead),
            group("g", ["hub", "h"]),
            # shadowing allowed: the dead proxy, listed first, is really asked first
            group("gs", ["hub", "h"], allow_proxy_shadowing=True),
        ]
    )
    skopeo(
        "copy", "--quiet", *NO_TLS, oci_image.ref, f"docker://{server.image('team/app:v1', 'h')}"
    )
    for name in ("g", "gs"):
        started = time.perf_counter()
        skopeo(
            "copy",
            "--quiet",
            *NO_TLS,
            f"docker://{server.image('team/app:v1', name)}",
            f"oci:{tmp_path / name}:x",
        )
        assert time.perf_counter() - started < 20
    assert "group gs: member hub" in server.log()
    # what no member has: a 404 naming what each member said, the proxy's failure included
    resp = get_manifest(server, "g", "other/img", "v1")
    assert resp.status_code == 404, resp.text
    code, message = oci_error(resp)
    assert code == "MANIFEST_UNKNOWN"
    said = rf"hub: upstream {re.escape(dead)} (unreachable|blocked) \(.+\); not in h"
    assert re.fullmatch(said, message), message


def test_clients_print_why_no_member_has_the_image(
    portway_factory: PortwayFactory, dockerd: Dockerd, container_storage: ContainerStorage
) -> None:
    """docker, podman and skopeo print the message of a 404 (and only the status of a 5xx):
    a typo behind a dead upstream reads as what it is, for a group and a lone proxy."""
    dead = f"http://127.0.0.1:{free_port()}"
    server = portway_factory(
        repositories=[
            hosted("docker-hosted"),
            proxy("docker-hub", dead),
            group("docker-group", ["docker-hosted", "docker-hub"]),
        ]
    )
    # the breaker may block the dead upstream after a few tries: then the member says so
    problem = rf"upstream {re.escape(dead)} (unreachable \(cannot connect|blocked \(not contacted)"
    expected = {
        "docker-group": rf"not in docker-hosted; docker-hub: {problem}",
        "docker-hub": rf"not cached in docker-hub; {problem}",
    }
    for repository, text in expected.items():
        resp = get_manifest(server, repository, "team/typo", "v1")
        assert resp.status_code == 404 and oci_error(resp)[0] == "MANIFEST_UNKNOWN", resp.text
        assert re.match(text, oci_error(resp)[1]), oci_error(resp)[1]
        ref = server.image("team/typo:v1", repository)
        docker = dockerd.docker("pull", ref, check=False)
        podman = container_storage.podman("pull", "--tls-verify=false", ref, check=False)
        inspect = skopeo("inspect", "--tls-verify=false", f"docker://{ref}", check=False)
        for client, result in (("docker", docker), ("podman", podman), ("skopeo", inspect)):
            assert result.returncode != 0, client
            printed = re.search(r"manifest unknown: (.*)", result.stderr)
            assert printed and re.match(text, printed.group(1)), (client, result.stderr)
        # docker: "Error response from daemon: manifest for REF not found: manifest unknown: …"
        assert f"manifest for {ref} not found" in docker.stderr


def test_group_of_two_proxies_serves_an_image_only_the_second_upstream_has(
    tmp_path: Path, portway_factory: PortwayFactory, oci_image: OciImage, dockerd: Dockerd
) -> None:
    first = Distribution(tmp_path / "first").start()
    second = Distribution(tmp_path / "second").start()
    try:
        skopeo("copy", "--quiet", *NO_TLS, oci_image.ref, f"docker://{second.host}/team/only:v1")
        loose = Pusher(second.url).push_blob("team/only", b"a blob no manifest names")
        server = portway_factory(
            repositories=[
                proxy("pa", first.url),
                proxy("pb", second.url),
                group("g", ["pa", "pb"]),
            ]
        )
        skopeo(
            "copy",
            "--quiet",
            *NO_TLS,
            f"docker://{server.image('team/only:v1', 'g')}",
            f"oci:{tmp_path / 'pulled'}:x",
        )
        assert layout_blobs(tmp_path / "pulled") >= {layer.digest for layer in oci_image.layers}
        # the member that served the manifest serves its blobs: the first upstream is not asked
        assert "/blobs/" not in first.access_log()
        ref = server.image(f"team/only@{oci_image.manifest_digest}", "g")
        dockerd.docker("pull", "-q", ref)
        dockerd.docker("rmi", ref)
        # a blob no cached manifest names: each proxy member's upstream is asked in turn
        head = requests.head(v2(server, "g", f"team/only/blobs/{loose}"), timeout=30)
        assert head.status_code == 200 and head.headers["Content-Length"] == "24"
        assert get_blob(server, "g", "team/only", loose).content == b"a blob no manifest names"
        missing = "sha256:" + "d" * 64
        resp = get_blob(server, "g", "team/only", missing)
        assert resp.status_code == 404 and oci_error(resp)[0] == "BLOB_UNKNOWN"
        assert oci_error(resp)[1] == f"blob {missing}: not in pa, pb"
    finally:
        first.stop()
        second.stop()


def test_cold_and_warm_pull_through_a_group(
    upstream: Distribution,
    portway_factory: PortwayFactory,
    tmp_path: Path,
    container_storage: ContainerStorage,
    oci_image: OciImage,
    dockerd: Dockerd,
) -> None:
    server = portway_factory(
        repositories=[hosted("h"), proxy("hub", upstream.url), group("g", ["h", "hub"])]
    )
    times = []
    for attempt in ("cold", "warm"):
        started = time.perf_counter()
        skopeo(
            "copy",
            "--quiet",
            *NO_TLS,
            f"docker://{server.image('library/base:1', 'g')}",
            f"oci:{tmp_path / attempt}:x",
        )
        times.append(time.perf_counter() - started)
    blob_gets = len(re.findall(r'"GET /v2/library/base/blobs/', upstream.access_log()))
    assert blob_gets == 3  # config and two layers, once each
    print(f"\nskopeo pull through group: cold {times[0]:.2f} s, warm {times[1]:.2f} s")

    ref = server.image("library/real:1", "g")
    container_storage.podman("pull", "--tls-verify=false", "-q", ref)
    out = container_storage.podman("image", "inspect", "--format", "{{.Id}}", ref)
    assert out.stdout.strip() == oci_image.config_digest.removeprefix("sha256:")
    by_digest = server.image(f"library/real@{oci_image.manifest_digest}", "g")
    dockerd.docker("pull", "-q", by_digest)
    out = dockerd.docker("image", "inspect", "--format", "{{.Id}}", by_digest)
    assert out.stdout.strip() == oci_image.config_digest
    dockerd.docker("rmi", by_digest)


# -- push through the writable member ---------------------------------------------------------


def test_push_to_group_lands_in_writable_member_and_reuses_member_layers(
    upstream: Distribution, portway_factory: PortwayFactory, tmp_path: Path
) -> None:
    server = portway_factory(
        repositories=[
            hosted("h"),
            hosted("other"),
            proxy("hub", upstream.url),
            group("g", ["h", "other", "hub"], writable_member="h"),
            group("ro", ["other", "hub"]),
        ],
        server={"log_level": "debug"},
    )
    # An image of this test's own: the upstream is shared by the session, and blobs other
    # tests pushed there would be found through the hub member and not uploaded.
    app = make_oci_layout(tmp_path / "app", "v1", layers=3, seed=secrets.randbits(31) + 100)
    skopeo(
        "copy",
        "--quiet",
        *NO_TLS,
        "--digestfile",
        str(tmp_path / "d"),
        app.ref,
        f"docker://{server.image('team/app:v1', 'g')}",
    )
    digest = (tmp_path / "d").read_text().strip()
    assert digest_of(server, "h", "team/app", "v1") == digest
    assert digest_of(server, "other", "team/app", "v1") is None

    # an image whose layers another member already holds: the layers are not uploaded again
    layout = make_oci_layout(tmp_path / "layout", "v1", layers=2, layer_size=64 * 1024, seed=7)
    skopeo(
        "copy", "--quiet", *NO_TLS, layout.ref, f"docker://{server.image('team/lib:v1', 'other')}"
    )
    posts_before = _upload_posts(server, "g")
    assert posts_before >= 4  # the first push uploaded its config and layers through the group
    skopeo("copy", "--quiet", *NO_TLS, layout.ref, f"docker://{server.image('team/lib:v1', 'g')}")
    assert _upload_posts(server, "g") == posts_before
    assert digest_of(server, "h", "team/lib", "v1") == layout.manifest_digest
    for layer in layout.layers:
        head = requests.head(v2(server, "h", f"team/lib/blobs/{layer.digest}"), timeout=10)
        assert head.status_code == 200

    refused = requests.post(v2(server, "ro", "team/x/blobs/uploads/"), timeout=10)
    assert refused.status_code == 403
    code, message = oci_error(refused)
    assert code == "DENIED" and "writable_member" in message


def _upload_posts(server: PortwayServer, repository: str) -> int:
    """Upload POSTs through `repository` in the access log, once everything asked so far is
    written out: the log goes out in batches, so a marker request is made and its line
    waited for (one worker: its lines leave in order). Portway's own line format only: at
    debug level the log holds a second, combined-format line for each request."""
    marker = f"flushed-{secrets.token_hex(4)}"
    requests.get(f"{server.url}/v2/{marker}/tags/list", timeout=10)
    # Portway's own line ends the path with a quote; aiohttp's combined-format line (written
    # at once, not in batches) has " HTTP/1.1" there, so it cannot end the wait too early.
    mine = f'"GET /v2/{marker}/tags/list" '
    wait_for(lambda: mine in server.log(), what="the access log written out")
    prefix = rf"(?:/repository/{repository}/v2/|/v2/{repository}/)"
    return len(re.findall(rf'"POST {prefix}[^ "]*blobs/uploads/" ', server.log()))


# -- merged tag listing -----------------------------------------------------------------------


def _push_tags(server: PortwayServer, repository: str, tags: list[str]) -> PushedImage:
    pusher = _pusher(server, repository)
    image = pusher.push_image("team/app", tags[0], seed=len(tags))
    for tag in tags[1:]:
        pusher.push_manifest("team/app", tag, image.manifest, image.media_type)
    return image


def test_merged_tags_are_sorted_deduplicated_and_paginated(portway_factory: PortwayFactory) -> None:
    server = portway_factory(repositories=[hosted("h1"), hosted("h2"), group("g", ["h1", "h2"])])
    _push_tags(server, "h1", ["a", "c", "e", "g"])
    _push_tags(server, "h2", ["b", "c", "d", "g", "h"])
    url = v2(server, "g", "team/app/tags/list")
    everything = requests.get(url, timeout=10).json()
    assert everything == {"name": "team/app", "tags": ["a", "b", "c", "d", "e", "g", "h"]}

    pages: list[list[str]] = []
    next_url: str | None = f"{url}?n=3"
    while next_url is not None:
        resp = requests.get(next_url, timeout=10)
        assert resp.status_code == 200
        pages.append(resp.json()["tags"])
        link = resp.headers.get("Link")
        if link is None:
            next_url = None
        else:
            target = re.match(r'<([^>]+)>;\s*rel="next"', link)
            assert target is not None, link
            next_url = requests.compat.urljoin(url, target.group(1))
    assert pages == [["a", "b", "c"], ["d", "e", "g"], ["h"]]

    after = requests.get(url, params={"n": 2, "last": "c"}, timeout=10)
    assert after.json()["tags"] == ["d", "e"] and "Link" in after.headers
    last_page = requests.get(url, params={"n": 2, "last": "e"}, timeout=10)
    assert last_page.json()["tags"] == ["g", "h"] and "Link" not in last_page.headers

    catalog = requests.get(f"{server.repository_url('g')}/v2/_catalog", timeout=10).json()
    assert catalog["repositories"] == ["team/app"]
