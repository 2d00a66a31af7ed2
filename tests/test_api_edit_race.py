"""The `edit` privilege under concurrency: pushes racing to create one new tag.

A user with `add` but not `edit` may create a tag, never move one. When many of their pushes
of different manifests to the same new tag arrive at once (two worker processes), exactly one
creates it; every other push would move it, and is refused with DENIED.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import requests

from support.security import OCI_MANIFEST, Client, cli, make_image, push_image
from support.server import PortwayServer

REPO = "docker-hosted"
PASSWORD = "dev-Secret-race-1"
PUSHERS = 12
ROUNDS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayServer]:
    s = PortwayServer(tmp_path_factory.mktemp("edit-race"), workers=2, security={"enabled": True})
    s.start(timeout=90)  # two workers on a busy machine
    try:
        cli(s, "role", "add", "developer", "--privilege", f"{REPO}:browse,read,add")
        cli(s, "user", "add", "dev", "--password", PASSWORD, "--role=developer")
        yield s
    finally:
        s.stop()
        print(s.log()[-4000:])


def _racing_puts(client: Client, image: str, tag: str, bodies: list[bytes]) -> list[int]:
    """PUT every body to the same tag at once (one thread each, released together)."""
    barrier = threading.Barrier(len(bodies))
    answers: list[requests.Response | None] = [None] * len(bodies)

    def put(index: int) -> None:
        barrier.wait(30)
        answers[index] = client.raw(
            "PUT",
            f"/v2/{image}/manifests/{tag}",
            data=bodies[index],
            headers={"Content-Type": OCI_MANIFEST},
        )

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = []
    for answer in answers:
        assert answer is not None
        if answer.status_code != 201:
            assert answer.status_code == 403, answer.text
            assert answer.json()["errors"][0]["code"] == "DENIED", answer.text
        statuses.append(answer.status_code)
    return statuses


def test_concurrent_pushes_without_edit_create_a_tag_once(server: PortwayServer) -> None:
    dev = Client(server.url, prefix=f"/repository/{REPO}", user="dev", password=PASSWORD)
    image = "race"
    first = make_image("race")
    assert push_image(dev, image, "seed", first).status_code == 201  # blobs and a token
    variants = [make_image("race", note=f"variant {i}") for i in range(PUSHERS)]
    for round_ in range(ROUNDS):
        tag = f"new-{round_}"
        statuses = _racing_puts(dev, image, tag, [v.manifest for v in variants])
        assert statuses.count(201) == 1, statuses
        winner = variants[statuses.index(201)]
        got = dev.get_manifest(image, tag)
        assert got.status_code == 200 and got.content == winner.manifest
        # The same manifest again moves nothing: allowed without `edit`.
        assert dev.put_manifest(image, tag, winner.manifest).status_code == 201

    # Someone who holds `edit` still moves tags.
    admin = Client(server.url, prefix=f"/repository/{REPO}")
    admin.basic = ("admin", server.admin_password() or "")
    assert admin.put_manifest(image, "new-0", first.manifest).status_code == 201
    assert admin.get_manifest(image, "new-0").content == first.manifest
